//! Fuzzing the DNS messages a hostile pod or resolver can send, and what the sidecar learns
//! from answers (see `podwall-fuzz` for the harness and the long-running mode).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query as HQuery};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use podwall_fqdn::cache::{Cache, CacheConfig};
use podwall_fqdn::message::{Answer, Query};
use podwall_policy::FqdnId;

fn name(n: &str) -> Name {
    Name::from_str(n).expect("name")
}

fn query(n: &str, t: RecordType) -> Message {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(HQuery::query(name(n), t));
    m
}

fn record(owner: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(name(owner), ttl, data)
}

fn answer(q: &str, t: RecordType, records: Vec<Record>, truncated: bool) -> Vec<u8> {
    let mut m = query(q, t);
    m.metadata.message_type = MessageType::Response;
    m.metadata.truncation = truncated;
    for r in records {
        m.add_answer(r);
    }
    m.to_vec().expect("encodes")
}

/// Valid messages of the kinds the end-to-end tests exchange: queries, answers with A and
/// AAAA records, a CNAME chain, a truncated answer, a TXT answer carrying an address, many
/// records.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for t in [RecordType::A, RecordType::AAAA, RecordType::TXT] {
        out.push(query("api.example.com.", t).to_vec().expect("encodes"));
    }
    let api = Ipv4Addr::new(203, 0, 113, 10);
    out.push(answer(
        "api.example.com.",
        RecordType::A,
        vec![record("api.example.com.", 60, RData::A(A(api)))],
        false,
    ));
    out.push(answer(
        "api.example.com.",
        RecordType::AAAA,
        vec![record(
            "api.example.com.",
            30,
            RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
        )],
        false,
    ));
    out.push(answer(
        "www.shop.example.",
        RecordType::A,
        vec![
            record(
                "www.shop.example.",
                300,
                RData::CNAME(CNAME(name("shop.cdn.example."))),
            ),
            record(
                "shop.cdn.example.",
                20,
                RData::CNAME(CNAME(name("edge.cdn.example."))),
            ),
            record(
                "edge.cdn.example.",
                60,
                RData::A(A(Ipv4Addr::new(203, 0, 113, 20))),
            ),
        ],
        false,
    ));
    out.push(answer("big.example.com.", RecordType::A, vec![], true));
    out.push(answer(
        "big.example.com.",
        RecordType::A,
        (0..36)
            .map(|i| {
                record(
                    "big.example.com.",
                    60,
                    RData::A(A(Ipv4Addr::new(203, 0, 113, 30 + i))),
                )
            })
            .collect(),
        false,
    ));
    out.push(answer(
        "api.example.com.",
        RecordType::TXT,
        vec![record(
            "api.example.com.",
            60,
            RData::TXT(TXT::new(vec!["203.0.113.66".into()])),
        )],
        false,
    ));
    out
}

#[test]
fn dns_messages_never_panic_the_parsers_and_answers_teach_only_within_the_caps() {
    let seeds = seeds();
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    let config = CacheConfig {
        max_names: 8,
        max_ips_per_name: 4,
        min_ttl: Duration::ZERO,
    };
    let mut cache = Cache::new(config);
    let now = Instant::now();
    let mut parsed = 0u64;
    podwall_fuzz::run("dns", &seeds, 1024, |input| {
        let _ = Query::parse(input);
        let Ok(answer) = Answer::parse(input) else {
            return;
        };
        parsed += 1;
        // What is read is bounded by what was sent.
        assert!(answer.names.len() <= input.len(), "{answer:?}");
        assert!(answer.addresses.len() <= input.len() / 4, "{answer:?}");
        let learnable = answer.learnable();
        assert!(learnable.iter().all(|ip| answer.addresses.contains(ip)));
        // Learning keeps the cache within its caps, whatever the answers.
        for n in &answer.names {
            cache.learn(n, &[FqdnId(0)], &learnable, now);
        }
        assert!(cache.len() <= config.max_names, "{} names", cache.len());
        assert!(
            cache.addresses() <= config.max_names * config.max_ips_per_name,
            "{} addresses",
            cache.addresses()
        );
        for (ip, _) in &learnable {
            assert!(cache.names_for(*ip, now).len() <= config.max_names);
        }
    });
    eprintln!("{parsed} inputs parsed as answers");
    assert!(parsed > 0, "the mutations must leave some answers readable");
}
