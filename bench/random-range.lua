-- wrk script: GETs of one random 4 KiB-aligned 4 KiB range of a SIZE-byte resource.
-- Headers given to wrk with -H (e.g. Authorization) are sent with every request: wrk.format
-- sends only the headers it is handed (and Host), so they are copied from wrk.headers once.
local size = tonumber(os.getenv("BENCH_SIZE") or "1073741824")
local blocks = math.floor(size / 4096)
local headers
math.randomseed(os.time())
request = function()
  if not headers then
    headers = {}
    for name, value in pairs(wrk.headers) do headers[name] = value end
  end
  local first = math.random(0, blocks - 1) * 4096
  headers["Range"] = "bytes=" .. first .. "-" .. (first + 4095)
  return wrk.format("GET", nil, headers)
end
