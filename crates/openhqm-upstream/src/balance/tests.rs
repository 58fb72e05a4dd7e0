use std::collections::HashMap;

use super::*;

fn check_parse(input: &str, expected: Result<HashKey, ()>) {
    assert_eq!(HashKey::parse(input).map_err(|_| ()), expected, "{input}");
}

#[test]
fn hash_key_table() {
    check_parse(
        "metadata.session_id",
        Ok(HashKey::Metadata("session_id".into())),
    );
    check_parse("header:X-User", Ok(HashKey::Header("X-User".into())));
    check_parse("header: X-User", Ok(HashKey::Header("X-User".into())));
    check_parse("correlation_id", Ok(HashKey::CorrelationId));
    for bad in ["metadata.", "header:", "session_id", ""] {
        check_parse(bad, Err(()));
    }
    let env: Envelope = serde_json::from_str(
        r#"{"correlation_id":"01890a5d-ac96-774b-bcce-b302099a8057","payload":1,
            "headers":{"x-user":"u1"},"metadata":{"session_id":"s1","n":7,"endpoint":"e"}}"#,
    )
    .expect("envelope");
    for (key, expected) in [
        ("metadata.session_id", Some("s1")),
        ("metadata.n", Some("7")),
        ("metadata.endpoint", Some("e")),
        ("metadata.missing", None),
        ("header:X-User", Some("u1")),
        ("header:X-None", None),
        (
            "correlation_id",
            Some("01890a5d-ac96-774b-bcce-b302099a8057"),
        ),
    ] {
        let k = HashKey::parse(key).expect("valid");
        assert_eq!(k.extract(&env).as_deref(), expected, "{key}");
    }
}

#[test]
fn hash_is_stable() {
    // Pinned: a change would move every key on every ring.
    assert_eq!(hash64(b""), hash64(b""));
    assert_ne!(hash64(b"a"), hash64(b"b"));
    assert_eq!(hash64(b"session-42"), 0x666a_2654_7240_5471);
}

fn check_swrr(weights: &[u32], expected: &str) {
    let candidates: Vec<(usize, u32)> = weights.iter().copied().enumerate().collect();
    let mut state = BTreeMap::new();
    let got: String = (0..expected.len())
        .map(|_| {
            let i = smooth_weighted(&candidates, &mut state).expect("pick");
            char::from(b'a' + u8::try_from(i).expect("small"))
        })
        .collect();
    assert_eq!(got, expected, "{weights:?}");
}

#[test]
fn smooth_weighted_sequences() {
    check_swrr(&[5, 1, 1], "aabacaa");
    check_swrr(&[1, 1, 1], "abcabc");
    check_swrr(&[2, 1], "abaaba");
    check_swrr(&[1], "aaa");
    assert_eq!(smooth_weighted(&[], &mut BTreeMap::new()), None);
}

#[test]
fn power_of_two_prefers_the_less_loaded() {
    // rand always draws 0: compares candidates 0 and 1.
    let zero = |_| 0;
    assert_eq!(least_loaded_of_two(&[(7, 1, 5), (8, 1, 2)], zero), Some(8));
    assert_eq!(least_loaded_of_two(&[(7, 1, 2), (8, 1, 2)], zero), Some(7));
    // Weight 3 with 5 in flight is less loaded than weight 1 with 2.
    assert_eq!(least_loaded_of_two(&[(7, 3, 5), (8, 1, 2)], zero), Some(7));
    assert_eq!(least_loaded_of_two(&[(9, 1, 100)], zero), Some(9));
    assert_eq!(least_loaded_of_two(&[], zero), None);
    // The two draws are always distinct.
    let mut rng = fastrand::Rng::with_seed(7);
    let mut wins = HashMap::new();
    let cands = [(0, 1, 10), (1, 1, 0), (2, 1, 10)];
    for _ in 0..1000 {
        let i = least_loaded_of_two(&cands, |n| rng.usize(0..n)).expect("pick");
        *wins.entry(i).or_insert(0) += 1;
    }
    // Target 1 wins whenever it is drawn: 2 pairs in 3.
    let w1 = wins.get(&1).copied().unwrap_or(0);
    assert!((600..=740).contains(&w1), "{wins:?}");
}

#[test]
fn ring_spreads_keys_by_weight_and_moves_few_when_a_target_leaves() {
    let ring = Ring::new(&[("http://a", 1), ("http://b", 1), ("http://c", 2)]);
    let mut counts = [0u32; 3];
    let mut owner = Vec::new();
    for k in 0..4000 {
        let i = ring.pick(&format!("key-{k}"), |_| true).expect("pick");
        counts[i] += 1;
        owner.push(i);
    }
    // Expected shares 1000 / 1000 / 2000; allow generous spread.
    assert!((700..=1300).contains(&counts[0]), "{counts:?}");
    assert!((700..=1300).contains(&counts[1]), "{counts:?}");
    assert!((1600..=2400).contains(&counts[2]), "{counts:?}");
    // Without b, only b's keys move.
    for (k, before) in owner.iter().enumerate() {
        let after = ring.pick(&format!("key-{k}"), |i| i != 1).expect("pick");
        if *before != 1 {
            assert_eq!(after, *before, "key-{k} moved");
        } else {
            assert_ne!(after, 1);
        }
    }
    assert_eq!(ring.pick("k", |_| false), None);
    assert_eq!(Ring::new(&[]).pick("k", |_| true), None);
}
