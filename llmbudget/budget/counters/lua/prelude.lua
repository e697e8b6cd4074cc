-- the head of the scripts that seed without sweeping (ensure): the prefix and the number format
local p = ARGV[1]
local function n(x) return string.format('%.0f', x) end
