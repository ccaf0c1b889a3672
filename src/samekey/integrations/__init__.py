"""samekey under SDKs that send requests themselves (``samekey.integrations.stripe``).

Each integration imports its SDK when it is imported itself, never from ``import samekey``:
no SDK is a dependency of samekey.
"""
