-- ARGV: burst, cool-down seconds, decrease, floor, decrease interval -> {factor, cool-down left}
local cooldown, decrease = tonumber(ARGV[2]), tonumber(ARGV[3])
local floor, interval = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = clock()
local s = read_state()
local cfg = read_config()
if cfg then refill(s, rates(cfg, s), now) end
-- one cut per round trip: a 429 inside the previous cut's cool-down was sent before that cut
if now >= s.cool_until and now - s.last_dec >= interval then
  s.factor = math.max(floor, s.factor * decrease)
  s.last_dec = now
end
s.cool_until = math.max(s.cool_until, now + cooldown)
if cfg then
  -- start again from empty buckets once the cool-down is over: no burst into a 429
  s.req = math.min(s.req, 0)
  s.tok = math.min(s.tok, 0)
  s.ts = math.max(s.ts, s.cool_until)
end
save(s)
return {fmt(s.factor), fmt(s.cool_until - now)}
