-- wrk script: GETs of one random 4 KiB-aligned 4 KiB range of a SIZE-byte resource.
local size = tonumber(os.getenv("BENCH_SIZE") or "1073741824")
local blocks = math.floor(size / 4096)
math.randomseed(os.time())
request = function()
  local first = math.random(0, blocks - 1) * 4096
  return wrk.format("GET", nil, { Range = "bytes=" .. first .. "-" .. (first + 4095) })
end
