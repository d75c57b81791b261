-- ARGV: burst, remaining req, remaining tok, limit req, limit tok, reset req, reset tok
-- ('' where unknown) -> {req level, tok level} or 'unconfigured'
local cfg = read_config()
if not cfg then return 'unconfigured' end
local now = clock()
local s = read_state()
refill(s, rates(cfg, s), now)
local lim_req, lim_tok = tonumber(ARGV[4]), tonumber(ARGV[5])
if lim_req and lim_req > 0 then s.prov_rpm = lim_req end
if lim_tok and lim_tok > 0 then s.prov_tpm = lim_tok end
local r = rates(cfg, s)
refill(s, r, now)
local function lower(level, remaining, reset, rate)
  if remaining == nil or remaining >= level then return level end
  if remaining == 0 and reset and reset > 0 then
    return -rate * math.min(reset, BURST)
  end
  return remaining
end
s.req = lower(s.req, tonumber(ARGV[2]), tonumber(ARGV[6]), r.req_rate)
s.tok = lower(s.tok, tonumber(ARGV[3]), tonumber(ARGV[7]), r.tok_rate)
save(s)
return {fmt(s.req), fmt(s.tok)}
