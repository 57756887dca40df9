"""Verifies the endpoint's tokens two independent ways: with the JWKS (PyJWT's PyJWKClient) and
with the key's certificate from /oauth2/key/{kid} (the `cryptography` package), after checking
that the certificate is self-signed by that key and carries the key the JWKS publishes.

Usage: verify_certificate.py BASE_URL < tokens, one per line. Prints one JSON line per token.
Exit code 3: a package is missing.
"""
import json
import sys
import urllib.request

try:
    import jwt
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import padding
except ImportError as error:  # the Rust test decides whether that is fatal
    print(error, file=sys.stderr)
    sys.exit(3)

base = sys.argv[1]
jwks = jwt.PyJWKClient(base + "/oauth2/keys")
options = {"verify_aud": False}
for line in sys.stdin:
    token = line.strip()
    if not token:
        continue
    kid = jwt.get_unverified_header(token)["kid"]
    with urllib.request.urlopen(f"{base}/oauth2/key/{kid}") as reply:
        certificate = x509.load_pem_x509_certificate(reply.read())
    public = certificate.public_key()
    # Raises InvalidSignature unless the key signed its own certificate.
    public.verify(
        certificate.signature,
        certificate.tbs_certificate_bytes,
        padding.PKCS1v15(),
        certificate.signature_hash_algorithm,
    )
    published = jwks.get_signing_key(kid).key
    if published.public_numbers() != public.public_numbers():
        sys.exit(f"the certificate of {kid} does not carry the key the JWKS publishes")
    by_jwks = jwt.decode(token, published, algorithms=["RS256"], options=options)
    by_certificate = jwt.decode(token, public, algorithms=["RS256"], options=options)
    if by_jwks != by_certificate:
        sys.exit("the two verifications disagree")
    print(json.dumps({"kid": kid, "claims": by_certificate}))
