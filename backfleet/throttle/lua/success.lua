-- ARGV: burst -> factor
local s = read_state()
if s.factor >= 1 then return fmt(s.factor) end
local now = clock()
local cfg = read_config()
if cfg then refill(s, rates(cfg, s), now) end
if climb(s, now) then save(s) end
return fmt(s.factor)
