"""Fetches client_credentials tokens with Authlib and verifies them with PyJWT from the JWKS.

Usage: oauth_clients.py BASE_URL. Prints one JSON line per token. Exit code 3: a package is missing.
"""
import json
import sys

try:
    import jwt
    from authlib.integrations.requests_client import OAuth2Session
except ImportError as error:  # the Rust test decides whether that is fatal
    print(error, file=sys.stderr)
    sys.exit(3)

base = sys.argv[1]
token_url = base + "/oauth2/token"
jwks = jwt.PyJWKClient(base + "/.well-known/jwks.json")

cases = [
    # client_secret_basic, Authlib's default.
    ("f7d42348-c647-4efb-a52d-4c5787421e72", "f6h1FTI8Q3-7UScPZDzfXA", "client_secret_basic", "petstore.r"),
    # client_secret_post, with the seed 004 secret's `+` and `$` form-encoded in the body.
    ("1DR3434KDFJLR32L53L4235J6", "wqe34tyyh7679jokkDa$7df46bbbbjui+b7-sdfsdfY", "client_secret_post", None),
]
for client_id, secret, method, scope in cases:
    session = OAuth2Session(client_id, secret, token_endpoint_auth_method=method, scope=scope)
    token = session.fetch_token(token_url, grant_type="client_credentials")
    access = token["access_token"]
    key = jwks.get_signing_key_from_jwt(access)
    claims = jwt.decode(
        access,
        key.key,
        algorithms=["RS256"],
        audience="urn:com.networknt",
        issuer="urn:com:networknt:oauth2:v1",
        options={"require": ["exp", "iat", "nbf", "iss", "aud"]},
    )
    print(json.dumps({"token_type": token["token_type"], "expires_in": token["expires_in"], "verified": claims}))
