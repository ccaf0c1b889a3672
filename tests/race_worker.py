"""A worker process for the concurrency tests:
pays operations op-0..op-(n-1) in a shuffled order."""

import random
import sys

import samekey

journal, url, seed, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
order = list(range(n))
random.Random(seed).shuffle(order)
policy = samekey.RetryPolicy(initial_delay=0.01, max_delay=0.05)
with samekey.Client(journal=journal, base_url=url, policy=policy, lease=5.0) as client:
    for i in order:
        response = client.post("/charges", json={"amount": i}, operation=f"op-{i}")
        if response.status_code != 201 or response.json()["amount"] != i:
            sys.exit(f"op-{i}: unexpected answer {response.status_code} {response.text}")
print("done", flush=True)
