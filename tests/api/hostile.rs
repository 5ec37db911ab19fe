//! Property tests: random bytes and mutated valid messages never panic, never get a 5xx, and never store
//! anything unless the request is still a validly signed message.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use axum::body::Body;
use axum::http::Request;
use huabi::channel::wechat::WechatChannel;

use huabi::http::{AppState, WechatEndpoint, router};
use huabi::store::{self, Counts, Store};
use proptest::prelude::*;
use tower::ServiceExt;

use crate::helpers::*;

struct Fixture {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    store: Arc<dyn Store>,
    _db: TestDb,
}

/// One app and database per property (they run in parallel and compare row counts).
fn fixture(property: &'static str) -> &'static Fixture {
    static FIXTURES: LazyLock<Mutex<HashMap<&'static str, &'static Fixture>>> =
        LazyLock::new(Default::default);
    let mut map = FIXTURES.lock().expect("fixture map");
    map.entry(property)
        .or_insert_with(|| Box::leak(Box::new(new_fixture())))
}

fn new_fixture() -> Fixture {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (router, store, db) = rt.block_on(async {
        let db = TestDb::new(Backend::Sqlite).await;
        let settings = settings(&db.url, &[]);
        let store = store::connect(&settings.database).await.expect("connect");
        store.migrate().await.expect("migrate");
        let state = AppState::new(
            store.clone(),
            vec![Arc::new(WechatEndpoint {
                channel: WechatChannel::new("default", &settings.wechat).expect("channel"),
                passive: None,
            })],
            settings,
            Default::default(),
        );
        (router(state), store, db)
    });
    Fixture {
        rt,
        router,
        store,
        _db: db,
    }
}

/// Sends one request through the router; returns the status and the counts before and after.
fn send(
    property: &'static str,
    query: &[(String, String)],
    body: Vec<u8>,
) -> (u16, Counts, Counts) {
    let f = fixture(property);
    f.rt.block_on(async {
        let before = f.store.counts().await.expect("counts");
        let qs = serde_urlencoded_pairs(query);
        let req = Request::post(format!("/webhook/wechat?{qs}"))
            .body(Body::from(body))
            .expect("request");
        let resp = f.router.clone().oneshot(req).await.expect("infallible");
        let after = f.store.counts().await.expect("counts");
        (resp.status().as_u16(), before, after)
    })
}

fn serde_urlencoded_pairs(query: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match *m {
        Mutation::Flip(i, b) => {
            let i = i % bytes.len();
            bytes[i] ^= b;
        }
        Mutation::Truncate(i) => bytes.truncate(i % bytes.len()),
        Mutation::Insert(i, b) => {
            let i = i % (bytes.len() + 1);
            bytes.insert(i, b)
        }
        Mutation::Remove(i) => {
            let i = i % bytes.len();
            bytes.remove(i);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_refused_and_store_nothing(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (status, before, after) = send("random_bytes_are_refused_and_store_nothing", &plain_query(now(), "p"), body);
        prop_assert!(status == 400 || status == 413, "status {status}");
        prop_assert_eq!(before, after);
    }

    #[test]
    fn random_bytes_in_encrypted_mode_are_refused(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (_, mut query) = encrypted_request("<xml/>", now(), "p");
        query.retain(|(k, _)| k != "msg_signature");
        let (status, before, after) = send("random_bytes_in_encrypted_mode_are_refused", &query, body);
        prop_assert!((400..500).contains(&status), "status {status}");
        prop_assert_eq!(before, after);
    }

    #[test]
    fn mutated_ciphertext_is_refused_and_stores_nothing(
        msg_id in 1u64..u64::MAX,
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let (body, query) = encrypted_request(&text_xml("o_prop", msg_id, "mutate me"), now(), "p");
        let start = body.find("<Encrypt><![CDATA[").expect("cdata") + "<Encrypt><![CDATA[".len();
        let end = body.rfind("]]></Encrypt>").expect("end");
        let mut encrypt = body.as_bytes()[start..end].to_vec();
        let original = encrypt.clone();
        for m in &mutations {
            apply(&mut encrypt, m);
        }
        prop_assume!(encrypt != original);
        let mut mutated = body.as_bytes()[..start].to_vec();
        mutated.extend_from_slice(&encrypt);
        mutated.extend_from_slice(&body.as_bytes()[end..]);
        let (status, before, after) = send("mutated_ciphertext_is_refused_and_stores_nothing", &query, mutated);
        prop_assert!((400..500).contains(&status), "status {status}");
        prop_assert_eq!(before, after);
    }

    #[test]
    fn mutated_signature_parameters_are_refused(
        which in 0usize..5,
        mutations in proptest::collection::vec(mutation(), 1..3),
    ) {
        let (body, mut query) = encrypted_request(&text_xml("o_q", 1, "x"), now(), "p");
        let mut value = query[which].1.clone().into_bytes();
        for m in &mutations {
            apply(&mut value, m);
        }
        let value = String::from_utf8_lossy(&value).to_string();
        // A signature is hex: one whose letters only changed case (or gained surrounding spaces) is the same one.
        let same = |a: &str, b: &str| {
            query[which].0 == "msg_signature" && a.trim().eq_ignore_ascii_case(b.trim())
        };
        prop_assume!(value != query[which].1 && !same(&value, &query[which].1) && query[which].0 != "signature");
        query[which].1 = value;
        let (status, before, after) = send("mutated_signature_parameters_are_refused", &query, body.into_bytes());
        prop_assert!((400..500).contains(&status), "status {status}");
        prop_assert_eq!(before, after);
    }

    #[test]
    fn mutated_plaintext_messages_never_fail_the_server(
        msg_id in 1u64..u64::MAX,
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let mut body = text_xml("o_plain", msg_id, "画 ]]> 月亮").into_bytes();
        for m in &mutations {
            apply(&mut body, m);
        }
        let (status, before, after) = send("mutated_plaintext_messages_never_fail_the_server", &plain_query(now(), "p"), body);
        prop_assert!(status == 200 || status == 400, "status {status}");
        if status == 200 {
            prop_assert!(after.inbound - before.inbound <= 1 && after.jobs - before.jobs <= 1);
        } else {
            prop_assert_eq!(before, after);
        }
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_input(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = huabi::channel::wechat::xml::parse(&bytes);
        let key = huabi::channel::wechat::crypto::AesKey::from_encoding_key(AES_KEY).expect("key");
        let _ = key.decrypt(&String::from_utf8_lossy(&bytes), APP_ID);
        use base64::Engine as _;
        let _ = key.decrypt(&base64::engine::general_purpose::STANDARD.encode(&bytes), APP_ID);
    }
}
