-- ARGV: burst, tokens, waiter id, head-of-line ttl, poll interval, default rpm, default tpm,
-- first refusal time ('' on the first attempt) -> {status, wait, first refusal time}; status:
-- granted | requests | tokens | paused | cooldown | unconfigured | badconfig
local tokens, waiter = tonumber(ARGV[2]), ARGV[3]
local hol_ttl, poll = tonumber(ARGV[4]), tonumber(ARGV[5])
local cfg, why = read_config()
if not cfg and why == 'unconfigured' and tonumber(ARGV[6]) > 0 and tonumber(ARGV[7]) > 0 then
  redis.call('HSETNX', CFG, 'rpm', ARGV[6])
  redis.call('HSETNX', CFG, 'tpm', ARGV[7])
  redis.call('HSETNX', CFG, 'paused', '0')
  cfg, why = read_config()
end
if not cfg then return {why, '0', '0'} end
local now = clock()
local since = tonumber(ARGV[8]) or now
if cfg.paused then return {'paused', fmt(poll), fmt(since)} end
local s = read_state()
if s.cool_until > now then return {'cooldown', fmt(s.cool_until - now), fmt(since)} end
local r = rates(cfg, s)
refill(s, r, now)
if climb(s, now) then r = rates(cfg, s) end
local need_tok = math.min(tokens, r.tok_cap)
-- the head of line is the oldest refused waiter still polling; others take only its surplus
local hol_active = s.hol_id ~= nil and s.hol_until > now
local first = not hol_active or s.hol_id == waiter or since < s.hol_since
local granted, want_req, want_tok
if first then
  want_req, want_tok = 1, need_tok
  granted = s.req >= 1 and s.tok >= need_tok
else
  want_req, want_tok = 2, s.hol_tok + tokens
  granted = s.req >= want_req and s.tok - tokens >= s.hol_tok
end
if granted then
  s.req = s.req - 1
  s.tok = s.tok - tokens
  if not hol_active or s.hol_id == waiter then s.hol_id = nil end
  save(s)
  return {'granted', '0', fmt(since)}
end
local wait_req = math.max(0, (want_req - s.req) / r.req_rate)
local wait_tok = math.max(0, (want_tok - s.tok) / r.tok_rate)
if first and waiter ~= '' then
  s.hol_id, s.hol_until, s.hol_tok, s.hol_since = waiter, now + hol_ttl, need_tok, since
end
save(s)
if wait_req >= wait_tok then return {'requests', fmt(wait_req), fmt(since)} end
return {'tokens', fmt(wait_tok), fmt(since)}
