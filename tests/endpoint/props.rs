//! Whatever arrives, the endpoint answers with a 2xx or a 4xx and a JSON body; never a 5xx,
//! never a dropped connection (which is what a panic in a handler looks like from outside).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::LazyLock;

use proptest::prelude::*;

use crate::harness::*;

static SERVER: LazyLock<Server> = LazyLock::new(|| Server::start(SEED_CONFIG));

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/x-www-form-urlencoded".to_string())),
        Just(Some("application/json".to_string())),
        Just(Some("APPLICATION/JSON; charset=utf-8".to_string())),
        "[ -~]{0,40}".prop_map(Some),
    ]
}

fn authorization() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        "[ -~]{0,80}".prop_map(Some),
        "(Basic|basic|BASIC) [A-Za-z0-9+/=:%$!-]{0,60}".prop_map(Some),
        Just(Some(
            "Basic f7d42348-c647-4efb-a52d-4c5787421e72:f6h1FTI8Q3-7UScPZDzfXA".to_string()
        )),
    ]
}

/// Bodies close to real ones (so parsing goes deep) and arbitrary bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let names = prop_oneof![
        Just("grant_type"),
        Just("client_id"),
        Just("client_secret"),
        Just("scope"),
        Just("audience"),
        Just("sid"),
        Just("other"),
    ];
    let values = prop_oneof![
        Just("client_credentials".to_string()),
        Just("bootstrap_token".to_string()),
        Just("f7d42348-c647-4efb-a52d-4c5787421e00".to_string()),
        Just("f6h1FTI8Q3-7UScPZDzfXA".to_string()),
        Just("com.networknt.petstore-1.0.0".to_string()),
        "[ -~]{0,30}",
        "\\PC{0,10}",
    ];
    let pairs = prop::collection::vec((names, values), 0..8);
    prop_oneof![
        pairs.clone().prop_map(|pairs| {
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish()
                .into_bytes()
        }),
        pairs.prop_map(|pairs| {
            let object: serde_json::Map<String, serde_json::Value> = pairs
                .into_iter()
                .map(|(n, v)| (n.to_string(), v.into()))
                .collect();
            serde_json::to_vec(&object).unwrap()
        }),
        prop::collection::vec(any::<u8>(), 0..300),
    ]
}

fn send(
    method: &str,
    path: &str,
    content_type: Option<&str>,
    authorization: Option<&str>,
    body: &[u8],
    chunked: bool,
) -> (u16, String) {
    let address = SERVER.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    if let Some(value) = content_type {
        head.push_str(&format!("Content-Type: {value}\r\n"));
    }
    if let Some(value) = authorization {
        head.push_str(&format!("Authorization: {value}\r\n"));
    }
    let mut request = head.into_bytes();
    if chunked {
        request.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for chunk in body.chunks(7) {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
    } else {
        request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        request.extend_from_slice(body);
    }
    stream.write_all(&request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_token_request_gets_an_oauth_answer(
        method in prop_oneof![Just("POST"), Just("POST"), Just("POST"), Just("GET"), Just("PUT")],
        path in prop_oneof![Just("/oauth2/token"), Just("/oauth/token"), Just("/oauth")],
        content_type in content_type(),
        authorization in authorization(),
        body in body(),
        chunked in any::<bool>(),
    ) {
        let (status, text) = send(method, path, content_type.as_deref(), authorization.as_deref(), &body, chunked);
        prop_assert!((200..500).contains(&status), "{} {}", status, text);
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        if status == 200 {
            prop_assert!(json["access_token"].is_string());
        } else {
            prop_assert!(json["error"].is_string() && json["code"].is_string(), "{}", text);
        }
    }
}
