-- Compares stream entry IDs (MS-SEQ, decimal without leading zeros):
-- less(a, b) tells whether a comes before b. The numbers are compared as
-- strings, as Lua's numbers hold no 64-bit integer exactly. It begins the
-- other scripts.
local function numless(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if am ~= bm then return numless(am, bm) end
  return numless(as, bs)
end
