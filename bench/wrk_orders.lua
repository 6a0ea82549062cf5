-- wrk script: POST /orders, each body of a file sent once (bench/http_load.py).
--   wrk -s bench/wrk_orders.lua -t T -c C -d 600s URL -- BODIES_FILE T
-- Thread k sends lines k, k + T, k + 2T, ... of the file; past its last it asks
-- GET /healthz (no order) until every POST is answered, then stops; done() prints
-- "status CODE COUNT" lines for the POSTs. SIGINT ends wrk when the caller has seen
-- what it waits for.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local bodies = {}
local sent = 0
local answered = 0 -- POSTs answered: GET /healthz answers 200, a POST never does
statuses = {} -- global: done() reads it from each thread
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  local file, total = args[1], tonumber(args[2])
  local n = 0
  for line in io.lines(file) do
    if n % total == id then
      bodies[#bodies + 1] = line
    end
    n = n + 1
  end
end

local verified = false

function request()
  -- wrk calls thread 0's request() once to check it before any connection, and sends
  -- nothing of it: that call must not take a body.
  if id == 0 and not verified then
    verified = true
    return wrk.format("GET", "/healthz")
  end
  sent = sent + 1
  if sent <= #bodies then
    return wrk.format("POST", "/orders", headers, bodies[sent])
  end
  return wrk.format("GET", "/healthz")
end

function response(status, hdrs, body)
  if status ~= 200 then
    answered = answered + 1
    statuses[status] = (statuses[status] or 0) + 1
  end
  if answered >= #bodies then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for code, count in pairs(thread:get("statuses")) do
      total[code] = (total[code] or 0) + count
    end
  end
  for code, count in pairs(total) do
    io.write(string.format("status %d %d\n", code, count))
  end
end
