-- wrk script: POST a submit request (the quick start's demo payload).
wrk.method = "POST"
wrk.path = "/api/v1/submit"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"payload": {"operation": "uppercase", "data": "hello from the benchmark"}, "metadata": {"type": "bench"}}'
