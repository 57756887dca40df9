//! Every error row: HTTP status, RFC 6749 `error`, light-4j `code`, headers, and the Status
//! fields light-4j clients read.

use std::io::{Read, Write};
use std::net::TcpStream;

use bootstrap_token_operator::token::store::KeyProvider;

use crate::harness::*;

const FORM: &str = "Content-Type: application/x-www-form-urlencoded";
const SEED1_BASIC: &str =
    "Authorization: Basic f7d42348-c647-4efb-a52d-4c5787421e72:f6h1FTI8Q3-7UScPZDzfXA";

struct Case {
    name: &'static str,
    args: Vec<String>,
    status: u16,
    error: &'static str,
    code: &'static str,
}

fn case(
    name: &'static str,
    status: u16,
    error: &'static str,
    code: &'static str,
    args: &[&str],
) -> Case {
    Case {
        name,
        args: args.iter().map(|a| a.to_string()).collect(),
        status,
        error,
        code,
    }
}

fn check(reply: &Reply, case: &Case) {
    let name = case.name;
    assert_eq!(reply.status, case.status, "{name}: {}", reply.body);
    let json = reply.json();
    assert_eq!(json["error"], case.error, "{name}: {json}");
    assert_eq!(json["code"], case.code, "{name}: {json}");
    assert_eq!(json["statusCode"], case.status, "{name}");
    assert_eq!(json["severity"], "ERROR", "{name}");
    assert!(
        json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{name}"
    );
    let description = json["error_description"].as_str().unwrap_or("");
    assert!(!description.is_empty(), "{name}: no error_description");
    assert_eq!(json["description"], description, "{name}");
    assert!(
        reply
            .header("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{name}"
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"), "{name}");
    if case.status == 401 {
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Basic realm=\"bootstrap-token-operator\""),
            "{name}"
        );
    } else {
        assert_eq!(reply.header("www-authenticate"), None, "{name}");
    }
}

#[test]
fn every_error_row() {
    let server = Server::start(SEED_CONFIG);
    let token = format!("{}/oauth2/token", server.url);
    let big = format!(
        "grant_type=client_credentials&pad={}",
        "x".repeat(70 * 1024)
    );
    let cases = [
        case(
            "parameter twice",
            400,
            "invalid_request",
            "ERR12000",
            &[
                "-H",
                SEED1_BASIC,
                "-d",
                "grant_type=client_credentials&scope=petstore.r&scope=petstore.w",
            ],
        ),
        case(
            "JSON not an object",
            400,
            "invalid_request",
            "ERR12000",
            &[
                "-H",
                SEED1_BASIC,
                "-H",
                "Content-Type: application/json",
                "-d",
                "[1,2]",
            ],
        ),
        case(
            "JSON member not a string",
            400,
            "invalid_request",
            "ERR12000",
            &[
                "-H",
                SEED1_BASIC,
                "-H",
                "Content-Type: application/json",
                "-d",
                r#"{"grant_type":["client_credentials"]}"#,
            ],
        ),
        case(
            "no grant_type",
            400,
            "invalid_request",
            "ERR12001",
            &["-H", SEED1_BASIC, "-H", FORM, "-d", "scope=petstore.r"],
        ),
        case(
            "unknown grant_type",
            400,
            "unsupported_grant_type",
            "ERR12001",
            &[
                "-H",
                SEED1_BASIC,
                "-d",
                "grant_type=password&username=a&password=b",
            ],
        ),
        case(
            "no credentials",
            401,
            "invalid_client",
            "ERR12002",
            &["-d", "grant_type=client_credentials"],
        ),
        case(
            "client_id without secret",
            401,
            "invalid_client",
            "ERR12002",
            &[
                "-d",
                &format!("grant_type=client_credentials&client_id={SEED1_ID}"),
            ],
        ),
        case(
            "not Basic",
            401,
            "invalid_client",
            "ERR12003",
            &[
                "-H",
                "Authorization: Bearer abc.def.ghi",
                "-d",
                "grant_type=client_credentials",
            ],
        ),
        case(
            "Basic with an empty secret",
            401,
            "invalid_client",
            "ERR12003",
            &[
                "-H",
                &format!("Authorization: Basic {SEED1_ID}:"),
                "-d",
                "grant_type=client_credentials",
            ],
        ),
        case(
            "Basic not base64",
            401,
            "invalid_client",
            "ERR12004",
            &[
                "-H",
                "Authorization: Basic !!notbase64!!",
                "-d",
                "grant_type=client_credentials",
            ],
        ),
        case(
            "Basic without colon",
            401,
            "invalid_client",
            "ERR12004",
            &[
                "-H",
                "Authorization: Basic bm9jb2xvbg==",
                "-d",
                "grant_type=client_credentials",
            ],
        ),
        case(
            "wrong secret in header",
            401,
            "invalid_client",
            "ERR12007",
            &[
                "-u",
                &format!("{SEED1_ID}:wrong-secret-value"),
                "-d",
                "grant_type=client_credentials",
            ],
        ),
        case(
            "wrong secret in body",
            401,
            "invalid_client",
            "ERR12007",
            &[
                "-d",
                &format!(
                    "grant_type=client_credentials&client_id={SEED1_ID}&client_secret=wrong-secret-value"
                ),
            ],
        ),
        case(
            "unknown client",
            401,
            "invalid_client",
            "ERR12014",
            &[
                "-u",
                "nobody:wrong-secret-value",
                "-d",
                "grant_type=client_credentials",
            ],
        ),
        case(
            "bootstrap client asks client_credentials",
            400,
            "unauthorized_client",
            "ERR12024",
            &[
                "-u",
                &format!("{BOOTSTRAP_ID}:{SEED_SECRET}"),
                "-d",
                "grant_type=client_credentials",
            ],
        ),
        case(
            "ordinary client asks bootstrap_token",
            400,
            "unauthorized_client",
            "ERR12024",
            &[
                "-H",
                SEED1_BASIC,
                "-d",
                "grant_type=bootstrap_token&sid=com.networknt.petstore-1.0.0",
            ],
        ),
        case(
            "scope not granted",
            400,
            "invalid_scope",
            "ERR12027",
            &[
                "-H",
                SEED1_BASIC,
                "-d",
                "grant_type=client_credentials&scope=petstore.r%20admin",
            ],
        ),
        case(
            "bootstrap scope widened",
            400,
            "invalid_scope",
            "ERR12027",
            &[
                "-u",
                &format!("{BOOTSTRAP_ID}:{SEED_SECRET}"),
                "-d",
                "grant_type=bootstrap_token&sid=com.networknt.a&scope=admin",
            ],
        ),
        case(
            "header and body name different clients",
            400,
            "invalid_request",
            "ERR12028",
            &[
                "-H",
                SEED1_BASIC,
                "-d",
                "grant_type=client_credentials&client_id=client3x3mPl3",
            ],
        ),
        case(
            "no sid",
            400,
            "invalid_request",
            "ERR12901",
            &[
                "-u",
                &format!("{BOOTSTRAP_ID}:{SEED_SECRET}"),
                "-d",
                "grant_type=bootstrap_token",
            ],
        ),
        case(
            "sid too long",
            400,
            "invalid_request",
            "ERR12901",
            &[
                "-u",
                &format!("{BOOTSTRAP_ID}:{SEED_SECRET}"),
                "-d",
                &format!(
                    "grant_type=bootstrap_token&sid=com.networknt.{}",
                    "a".repeat(300)
                ),
            ],
        ),
        case(
            "forbidden audience",
            403,
            "access_denied",
            "ERR12902",
            &[
                "-H",
                SEED1_BASIC,
                "-d",
                "grant_type=client_credentials&audience=https://elsewhere/",
            ],
        ),
        case(
            "sid the policy forbids",
            403,
            "access_denied",
            "ERR12903",
            &[
                "-u",
                &format!("{BOOTSTRAP_ID}:{SEED_SECRET}"),
                "-d",
                "grant_type=bootstrap_token&sid=org.other.svc",
            ],
        ),
        case(
            "GET",
            405,
            "invalid_request",
            "ERR12905",
            &["-H", SEED1_BASIC],
        ),
        case(
            "text/plain",
            415,
            "invalid_request",
            "ERR12906",
            &[
                "-H",
                SEED1_BASIC,
                "-H",
                "Content-Type: text/plain",
                "-d",
                "grant_type=client_credentials",
            ],
        ),
        case(
            "no Content-Type",
            415,
            "invalid_request",
            "ERR12906",
            &[
                "-H",
                SEED1_BASIC,
                "-H",
                "Content-Type:",
                "-d",
                "grant_type=client_credentials",
            ],
        ),
        case(
            "body over 64 KiB",
            413,
            "invalid_request",
            "ERR12907",
            &["-H", SEED1_BASIC, "-H", "Expect:", "-d", &big],
        ),
    ];
    for case in &cases {
        let mut args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        args.push(&token);
        let reply = curl(&args);
        check(&reply, case);
        assert!(
            !reply.body.contains("wrong-secret-value"),
            "{}: a secret is echoed",
            case.name
        );
        if case.status == 405 {
            assert_eq!(reply.header("allow"), Some("POST"));
        }
    }
    // Every answer above is counted by its `error`, under a bounded grant label.
    assert_eq!(
        server.metrics.count("client_credentials", "invalid_client"),
        9
    );
    assert_eq!(server.metrics.count("other", "unsupported_grant_type"), 1);
    let text = server.metrics_text();
    assert!(
        text.contains(
            r#"token_endpoint_requests_total{grant="bootstrap_token",outcome="access_denied"} 1"#
        ),
        "{text}"
    );
}

/// A chunked body is counted as it arrives: past 64 KiB the answer is 413 without reading on.
#[test]
fn chunked_body_over_the_limit() {
    let server = Server::start(SEED_CONFIG);
    let address = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = "x".repeat(16 * 1024);
    for _ in 0..5 {
        // The server may answer and close before the last chunk; that is the point.
        if stream
            .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("ERR12907"), "{answer}");
}

#[test]
fn other_methods_and_paths() {
    let server = Server::start(SEED_CONFIG);
    let reply = curl(&[
        "-X",
        "POST",
        "-d",
        "x=1",
        &format!("{}/oauth2/keys", server.url),
    ]);
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    assert_eq!(reply.json()["code"], "ERR12905");
    let reply = curl(&["-X", "DELETE", &format!("{}/oauth/token", server.url)]);
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("POST"));
    let reply = curl(&[&format!("{}/nothing/here", server.url)]);
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["code"], "ERR12908");
    let reply = curl(&[&format!("{}/oauth2/key/nope", server.url)]);
    assert_eq!(reply.status, 404);
}

/// Keys that cannot be loaded (no API server behind the client): 503 `temporarily_unavailable`
/// for tokens and keys alike, and the server keeps answering.
#[test]
fn keys_unavailable_is_503() {
    let server = Server::start_with(SEED_CONFIG, || {
        // The client's worker runs on the server's runtime, so this is called there.
        let unreachable = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(unreachable).unwrap();
        KeyProvider::new(client, "ns", Default::default())
    });
    for _ in 0..2 {
        let reply = curl(&[
            "-H",
            SEED1_BASIC,
            "-d",
            "grant_type=client_credentials",
            &format!("{}/oauth2/token", server.url),
        ]);
        check(
            &reply,
            &case(
                "keys unavailable",
                503,
                "temporarily_unavailable",
                "ERR12904",
                &[],
            ),
        );
        let reply = curl(&[&format!("{}/oauth2/keys", server.url)]);
        assert_eq!(reply.status, 503);
        assert_eq!(reply.json()["error"], "temporarily_unavailable");
    }
}

/// The bootstrap_token grant takes the service ids a BootstrapToken may name, and no others:
/// 1 to 253 printable ASCII characters without spaces (`resource::valid_service_id`).
#[test]
fn sid_grammar_is_the_crds() {
    let server = Server::start(SEED_CONFIG);
    let request = |sid: &str| {
        let encoded: String = form_urlencoded::byte_serialize(sid.as_bytes()).collect();
        curl(&[
            "-u",
            &format!("{BOOTSTRAP_ID}:{SEED_SECRET}"),
            "-d",
            &format!("grant_type=bootstrap_token&sid={encoded}"),
            &format!("{}/oauth2/token", server.url),
        ])
    };
    let longest = format!("com.networknt.{}", "a".repeat(253 - 14));
    let (_, claims) = request(&longest).token();
    assert_eq!(claims["sid"], longest.as_str());
    for bad in [
        "com.networknt.a b".to_string(),
        "com.networknt.a\u{202E}b".into(),
        "com.networknt.a\u{2028}b".into(),
        "com.networknt.a\u{200B}b".into(),
        "com.networknt.\u{FEFF}a".into(),
        "com.networknt.caf\u{e9}".into(),
        "com.networknt.a\tb".into(),
        format!("{longest}a"),
    ] {
        let reply = request(&bad);
        assert_eq!(reply.status, 400, "{bad:?}: {}", reply.body);
        assert_eq!(reply.json()["code"], "ERR12901", "{bad:?}");
    }
}

/// What a request carries is never quoted back, nor logged: errors say what was wrong in fixed
/// words and configured names.
#[test]
fn request_content_is_never_echoed() {
    const MARK: &str = "ZQXMARKER";
    let server = Server::start(SEED_CONFIG);
    let token = format!("{}/oauth2/token", server.url);
    let bootstrap = format!("{BOOTSTRAP_ID}:{SEED_SECRET}");
    let json = "Content-Type: application/json";
    let wrong_secret = format!("{SEED1_ID}:ZQXMARKER");
    let keys = format!("{}/oauth2/keys", server.url);
    let nowhere = format!("{}/ZQXMARKER", server.url);
    let no_kid = format!("{}/oauth2/key/ZQXMARKER", server.url);
    let requests: [&[&str]; 12] = [
        &["-H", SEED1_BASIC, "-H", json, "-d", "\"ZQXMARKER\"", &token],
        &[
            "-H",
            SEED1_BASIC,
            "-H",
            json,
            "-d",
            "[\"ZQXMARKER\"]",
            &token,
        ],
        &[
            "-H",
            SEED1_BASIC,
            "-H",
            json,
            "-d",
            "{\"grant_type\":\"ZQXMARKER\"",
            &token,
        ],
        &["-H", SEED1_BASIC, "-d", "grant_type=ZQXMARKER", &token],
        &[
            "-H",
            SEED1_BASIC,
            "-d",
            "grant_type=client_credentials&scope=ZQXMARKER",
            &token,
        ],
        &[
            "-u",
            "ZQXMARKER:secret",
            "-d",
            "grant_type=client_credentials",
            &token,
        ],
        &[
            "-u",
            &wrong_secret,
            "-d",
            "grant_type=client_credentials",
            &token,
        ],
        &[
            "-u",
            &bootstrap,
            "-d",
            "grant_type=bootstrap_token&sid=ZQXMARKER%20x",
            &token,
        ],
        &["-X", "ZQXMARKER", &token],
        &["-X", "ZQXMARKER", &keys],
        &[&nowhere],
        &[&no_kid],
    ];
    for args in requests {
        let reply = curl(args);
        assert!(reply.status >= 400, "{args:?}: {}", reply.body);
        assert!(!reply.body.contains(MARK), "{args:?}: {}", reply.body);
    }
    let logs = server.logs();
    assert!(logs.contains("token request refused"), "{logs}");
    assert!(!logs.contains(MARK), "{logs}");
}
