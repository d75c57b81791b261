-- ARGV: burst -> {rpm, tpm, paused, factor, cool-down left, prov rpm, prov tpm,
-- effective rpm, effective tpm, requests available, tokens available} ('' where unknown)
local now = clock()
local s = read_state()
local raw = redis.call('HMGET', CFG, 'rpm', 'tpm', 'paused')
local cfg = read_config()
if cfg then refill(s, rates(cfg, s), now) end
climb(s, now)  -- what the next acquire will see (status writes nothing)
local out = {raw[1] or '', raw[2] or '', raw[3] or '0', fmt(s.factor),
             fmt(math.max(0, s.cool_until - now)),
             s.prov_rpm and fmt(s.prov_rpm) or '', s.prov_tpm and fmt(s.prov_tpm) or '',
             '', '', '', ''}
if cfg then
  local r = rates(cfg, s)
  refill(s, r, now)
  out[8], out[9], out[10], out[11] = fmt(r.rpm), fmt(r.tpm), fmt(s.req), fmt(s.tok)
end
return out
