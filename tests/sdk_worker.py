"""One payment through a real SDK over samekey, as user code writes it: `python sdk_worker.py SDK
URL JOURNAL`.

Run as a process by test_sdks.py (and SIGKILLed there mid-payment); the test also calls `pay` itself
for the re-run. Prints the payment's id and the key samekey journaled for it.
"""

from __future__ import annotations

import sys

import samekey

OPERATION = "order-1042/pay"


def pay(sdk: str, url: str, journal: str) -> tuple[str, str]:
    """(the SDK's payment id, the operation's journaled key)."""
    if sdk == "stripe":
        import stripe

        from samekey.integrations.stripe import StripeHTTPClient

        http = StripeHTTPClient(journal=journal)
        try:
            client = stripe.StripeClient(
                "sk_test_123", http_client=http, base_addresses={"api": url}, max_network_retries=0
            )
            with samekey.operation(OPERATION):
                intent = client.v1.payment_intents.create(
                    params={"amount": 1200, "currency": "usd"}
                )
            return intent.id, http.key_for(OPERATION)
        finally:
            http.close()
    if sdk == "square":
        import square

        with samekey.Client(journal=journal) as square_http:
            sq = square.Square(token="EAAA-test", base_url=url, httpx_client=square_http)
            key = square_http.key_for(
                OPERATION
            )  # durable before the request (and its body) is built
            with samekey.operation(OPERATION):
                created = sq.payments.create(
                    source_id="cnon:card-nonce-ok",
                    idempotency_key=key,
                    amount_money={"amount": 1200, "currency": "USD"},
                    request_options={"max_retries": 0},
                )
            assert created.payment is not None and created.payment.id is not None
            return created.payment.id, key
    if sdk == "increase":
        import increase

        with samekey.Client(journal=journal) as increase_http:
            client = increase.Increase(
                api_key="test-key", base_url=url, http_client=increase_http, max_retries=0
            )
            with samekey.operation(OPERATION):
                transfer = client.account_transfers.create(
                    account_id="account_in71c4amph0vgo2qllky",
                    amount=1200,
                    description="order 1042",
                    destination_account_id="account_uf16sut2ct5bevmq3eh",
                )
            return transfer.id, increase_http.key_for(OPERATION)
    raise SystemExit(f"unknown SDK {sdk!r}: stripe, square or increase")


if __name__ == "__main__":
    payment, key = pay(*sys.argv[1:4])
    print(payment, key, flush=True)
