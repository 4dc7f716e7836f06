//! DNS messages, read and written with hickory-proto: the question a pod asks, the refusal it
//! gets, and what an answer teaches (addresses, following CNAME chains, with TTLs).

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use crate::pattern::canonical;

/// A response code as dig and Hubble print it: `NOERROR`, `NXDOMAIN`, `REFUSED`, ...
pub fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("{other:?}").to_ascii_uppercase(),
    }
}

/// A message the proxy cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Not a DNS message.
    #[error("malformed DNS message: {0}")]
    Malformed(String),
    /// A response where a query was expected, or the reverse.
    #[error("unexpected DNS message type")]
    WrongType,
    /// Not a standard query with exactly one question.
    #[error("not a standard query with one question (opcode {opcode}, {questions} questions)")]
    Unsupported {
        /// The opcode.
        opcode: String,
        /// How many questions.
        questions: usize,
    },
}

/// What a pod asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The message ID.
    pub id: u16,
    /// The name, canonical (lower case, no trailing dot).
    pub name: String,
    /// The record type asked for (`A`, `AAAA`, ...).
    pub qtype: RecordType,
    /// The class (`IN`).
    pub qclass: DNSClass,
}

impl Question {
    /// The same question under another message ID.
    pub fn with_id(&self, id: u16) -> Question {
        Question { id, ..self.clone() }
    }
}

/// `message` (a query or a response) with its ID replaced by `id`: the sidecar asks resolvers
/// under an ID of its own, which the app cannot know, and hands the answer back under the
/// app's.
pub fn with_id(message: &[u8], id: u16) -> Vec<u8> {
    let mut out = message.to_vec();
    if let Some(head) = out.get_mut(..2) {
        head.copy_from_slice(&id.to_be_bytes());
    }
    out
}

/// A message ID the app cannot predict.
pub fn random_id() -> u16 {
    rand::random()
}

/// A parsed query.
#[derive(Debug, Clone)]
pub struct Query {
    message: Message,
    /// Its question.
    pub question: Question,
}

impl Query {
    /// Reads a query from the wire.
    pub fn parse(bytes: &[u8]) -> Result<Self, MessageError> {
        let message =
            Message::from_vec(bytes).map_err(|e| MessageError::Malformed(e.to_string()))?;
        if message.metadata.message_type != MessageType::Query {
            return Err(MessageError::WrongType);
        }
        if message.metadata.op_code != OpCode::Query || message.queries.len() != 1 {
            return Err(MessageError::Unsupported {
                opcode: format!("{:?}", message.metadata.op_code),
                questions: message.queries.len(),
            });
        }
        let q = &message.queries[0];
        let question = Question {
            id: message.metadata.id,
            name: canonical(&q.name().to_ascii()),
            qtype: q.query_type(),
            qclass: q.query_class(),
        };
        Ok(Query { message, question })
    }

    /// The reply that refuses this query with `rcode` (REFUSED for a name no rule allows,
    /// SERVFAIL when the resolver cannot be reached): same ID and question, no records.
    pub fn reply_with(&self, rcode: ResponseCode) -> Vec<u8> {
        let mut reply = Message::error_msg(self.message.metadata.id, OpCode::Query, rcode);
        reply.metadata.recursion_desired = self.message.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.add_queries(self.message.queries.iter().cloned());
        if self.message.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            reply.set_edns(edns);
        }
        // Encoding a message built from a parsed one cannot fail; an empty reply would be
        // dropped by the client, which then retries.
        reply.to_vec().unwrap_or_default()
    }
}

/// A standard query for `name` (absolute or not; a trailing dot is added) of type `qtype`,
/// recursion desired, with a random ID. Returns the bytes and the question an answer must
/// repeat.
pub fn encode_query(name: &str, qtype: RecordType) -> Result<(Vec<u8>, Question), MessageError> {
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    let parsed = Name::from_ascii(&fqdn).map_err(|e| MessageError::Malformed(e.to_string()))?;
    let id = random_id();
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(hickory_proto::op::Query::query(parsed, qtype));
    let bytes = m
        .to_vec()
        .map_err(|e| MessageError::Malformed(e.to_string()))?;
    let question = Question {
        id,
        name: canonical(&fqdn),
        qtype,
        qclass: DNSClass::IN,
    };
    Ok((bytes, question))
}

/// What an answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The message ID.
    pub id: u16,
    /// The question it answers (name, type, class), if it repeats exactly one.
    pub question: Option<(String, RecordType, DNSClass)>,
    /// The response code.
    pub rcode: ResponseCode,
    /// The TC bit: the answer did not fit and the client should ask again over TCP.
    pub truncated: bool,
    /// The question's name and every name its CNAME chain leads to, in order.
    pub names: Vec<String>,
    /// Addresses of those names, each with the smallest TTL on its way (the address record's
    /// and the CNAMEs' that led to it).
    pub addresses: Vec<(IpAddr, u32)>,
    /// For each of `addresses`, its record's owner (an index into `names`).
    pub owners: Vec<usize>,
    /// The CNAMEs between `names`: (owner, target), as indexes into `names`.
    pub cnames: Vec<(usize, usize)>,
}

impl Answer {
    /// Reads a response from the wire.
    pub fn parse(bytes: &[u8]) -> Result<Self, MessageError> {
        let message =
            Message::from_vec(bytes).map_err(|e| MessageError::Malformed(e.to_string()))?;
        if message.metadata.message_type != MessageType::Response {
            return Err(MessageError::WrongType);
        }
        let question = match message.queries.as_slice() {
            [q] => Some((
                canonical(&q.name().to_ascii()),
                q.query_type(),
                q.query_class(),
            )),
            _ => None,
        };
        let mut names: Vec<String> = question.iter().map(|(n, _, _)| n.clone()).collect();
        // (name, smallest CNAME TTL to reach it), in the order of `names`
        let mut reach: Vec<(String, u32)> = names.iter().map(|n| (n.clone(), u32::MAX)).collect();
        let mut cnames: Vec<(usize, usize)> = Vec::new();
        // Follow the chain whatever the order of the records; a loop cannot grow the set.
        loop {
            let mut grew = false;
            for r in message
                .answers
                .iter()
                .filter(|r| r.dns_class == DNSClass::IN)
            {
                if let RData::CNAME(target) = &r.data {
                    let owner = canonical(&r.name.to_ascii());
                    let Some(from) = reach.iter().position(|(n, _)| *n == owner) else {
                        continue;
                    };
                    let ttl = reach[from].1;
                    let target = canonical(&target.0.to_ascii());
                    let to = match reach.iter().position(|(n, _)| *n == target) {
                        Some(to) => to,
                        None => {
                            reach.push((target.clone(), ttl.min(r.ttl)));
                            names.push(target);
                            grew = true;
                            reach.len() - 1
                        }
                    };
                    if !cnames.contains(&(from, to)) {
                        cnames.push((from, to));
                    }
                }
            }
            if !grew {
                break;
            }
        }
        let mut addresses = Vec::new();
        let mut owners = Vec::new();
        // Internet-class records only: an address in a CHAOS record names nothing here.
        for r in message
            .answers
            .iter()
            .filter(|r| r.dns_class == DNSClass::IN)
        {
            let ip = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            let owner = canonical(&r.name.to_ascii());
            if let Some(at) = reach.iter().position(|(n, _)| *n == owner) {
                addresses.push((ip, r.ttl.min(reach[at].1)));
                owners.push(at);
            }
        }
        Ok(Answer {
            id: message.metadata.id,
            question,
            rcode: message.metadata.response_code,
            truncated: message.metadata.truncation,
            names,
            addresses,
            owners,
            cnames,
        })
    }

    /// Whether this answers `question` (same ID, and the one question repeated: name, which is
    /// canonical so compared regardless of case, type and class): only such answers are
    /// forwarded and learned from.
    pub fn answers(&self, question: &Question) -> bool {
        self.id == question.id
            && self.question.as_ref().is_some_and(|(n, t, c)| {
                *n == question.name && *t == question.qtype && *c == question.qclass
            })
    }

    /// The addresses an answer may teach: those of the type asked for (A: IPv4, AAAA: IPv6,
    /// ANY: both), owned by the question's name or its CNAME chain. An address inside the
    /// answer to any other question (TXT, MX, ...) teaches nothing.
    pub fn learnable(&self) -> Vec<(IpAddr, u32)> {
        self.learnable_where(|_| true)
    }

    /// The learnable addresses that resolving `names[name]` leads to: owned by that name or by
    /// one its CNAMEs lead to. Not those of a name before it in the chain: in `x.evil CNAME
    /// api.example.com` with `x.evil A 192.0.2.66` beside it (a resolver that passes "CNAME
    /// and other data" through), 192.0.2.66 is x.evil's, never api.example.com's.
    pub fn learnable_for(&self, name: usize) -> Vec<(IpAddr, u32)> {
        let mut reached = vec![name];
        let mut i = 0;
        while let Some(&from) = reached.get(i) {
            for &(_, to) in self.cnames.iter().filter(|(f, _)| *f == from) {
                if !reached.contains(&to) {
                    reached.push(to);
                }
            }
            i += 1;
        }
        self.learnable_where(|owner| reached.contains(&owner))
    }

    fn learnable_where(&self, owned: impl Fn(usize) -> bool) -> Vec<(IpAddr, u32)> {
        let wanted = |ip: &IpAddr| match self.question.as_ref() {
            Some((_, RecordType::A, DNSClass::IN)) => ip.is_ipv4(),
            Some((_, RecordType::AAAA, DNSClass::IN)) => ip.is_ipv6(),
            Some((_, RecordType::ANY, DNSClass::IN)) => true,
            _ => false,
        };
        self.addresses
            .iter()
            .zip(&self.owners)
            .filter(|((ip, _), owner)| wanted(ip) && owned(**owner))
            .map(|(a, _)| *a)
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hickory_proto::op::Query as Q;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use std::str::FromStr;

    pub(crate) fn query_bytes(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Q::query(Name::from_str(name).expect("name"), qtype));
        m.to_vec().expect("encodes")
    }

    pub(crate) fn answer_bytes(id: u16, name: &str, records: Vec<Record>) -> Vec<u8> {
        let mut m = Message::response(id, OpCode::Query);
        m.add_query(Q::query(Name::from_str(name).expect("name"), RecordType::A));
        m.add_answers(records);
        m.to_vec().expect("encodes")
    }

    pub(crate) fn a(name: &str, ttl: u32, ip: &str) -> Record {
        Record::from_rdata(
            Name::from_str(name).expect("name"),
            ttl,
            RData::A(A(ip.parse().expect("ip"))),
        )
    }

    fn aaaa(name: &str, ttl: u32, ip: &str) -> Record {
        Record::from_rdata(
            Name::from_str(name).expect("name"),
            ttl,
            RData::AAAA(AAAA(ip.parse().expect("ip"))),
        )
    }

    fn cname(name: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(
            Name::from_str(name).expect("name"),
            ttl,
            RData::CNAME(CNAME(Name::from_str(target).expect("name"))),
        )
    }

    #[test]
    fn an_encoded_query_reads_back_with_its_question_and_an_answer_to_it_is_recognised() {
        let (bytes, question) =
            encode_query("Podwall.podwall-system.svc", RecordType::A).expect("q");
        let q = Query::parse(&bytes).expect("parses");
        assert_eq!(q.question, question);
        assert_eq!(question.name, "podwall.podwall-system.svc");
        let answer = Answer::parse(&answer_bytes(
            question.id,
            "podwall.podwall-system.svc.",
            vec![a("podwall.podwall-system.svc.", 30, "10.96.0.20")],
        ))
        .expect("answer");
        assert!(answer.answers(&question));
        assert!(encode_query("bad..name", RecordType::A).is_err());
    }

    #[test]
    fn a_query_is_read_with_its_name_in_canonical_form() {
        let q = Query::parse(&query_bytes(7, "API.GitHub.com.", RecordType::AAAA)).expect("q");
        assert_eq!(
            q.question,
            Question {
                id: 7,
                name: "api.github.com".into(),
                qtype: RecordType::AAAA,
                qclass: DNSClass::IN
            }
        );
    }

    #[test]
    fn responses_and_garbage_are_not_queries() {
        assert!(matches!(
            Query::parse(&answer_bytes(1, "a.com.", vec![])),
            Err(MessageError::WrongType)
        ));
        assert!(matches!(
            Query::parse(&[1, 2, 3]),
            Err(MessageError::Malformed(_))
        ));
    }

    #[test]
    fn a_refusal_keeps_the_id_and_question_and_carries_no_records() {
        let q = Query::parse(&query_bytes(0x1234, "evil.com.", RecordType::A)).expect("q");
        let reply = Message::from_vec(&q.reply_with(ResponseCode::Refused)).expect("parses");
        assert_eq!(reply.metadata.id, 0x1234);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        assert!(reply.metadata.recursion_desired);
        assert_eq!(reply.queries.len(), 1);
        assert!(reply.answers.is_empty());
    }

    #[test]
    fn an_answer_follows_cname_chains_in_any_order_with_the_smallest_ttl() {
        let bytes = answer_bytes(
            9,
            "www.example.com.",
            vec![
                a("edge.cdn.net.", 300, "203.0.113.7"),
                cname("alias.example.net.", 60, "edge.cdn.net."),
                cname("www.example.com.", 3600, "alias.example.net."),
                aaaa("edge.cdn.net.", 30, "2001:db8::7"),
                a("unrelated.org.", 10, "198.51.100.1"),
            ],
        );
        let ans = Answer::parse(&bytes).expect("answer");
        assert_eq!(
            ans.names,
            ["www.example.com", "alias.example.net", "edge.cdn.net"]
        );
        assert_eq!(
            ans.addresses,
            [
                ("203.0.113.7".parse().expect("ip"), 60),
                ("2001:db8::7".parse().expect("ip"), 30)
            ],
            "the unrelated record teaches nothing"
        );
        assert!(ans.answers(&Question {
            id: 9,
            name: "www.example.com".into(),
            qtype: RecordType::A,
            qclass: DNSClass::IN
        }));
        assert!(!ans.answers(&Question {
            id: 10,
            name: "www.example.com".into(),
            qtype: RecordType::A,
            qclass: DNSClass::IN
        }));
        assert!(!ans.answers(&Question {
            id: 9,
            name: "other.example.com".into(),
            qtype: RecordType::A,
            qclass: DNSClass::IN
        }));
    }

    #[test]
    fn a_cname_loop_ends() {
        let bytes = answer_bytes(
            1,
            "a.com.",
            vec![cname("a.com.", 5, "b.com."), cname("b.com.", 5, "a.com.")],
        );
        let ans = Answer::parse(&bytes).expect("answer");
        assert_eq!(ans.names, ["a.com", "b.com"]);
        assert!(ans.addresses.is_empty());
    }

    fn answer_to(qtype: RecordType, records: Vec<Record>) -> Answer {
        let mut m = Message::response(9, OpCode::Query);
        m.add_query(Q::query(
            Name::from_str("api.github.com.").expect("name"),
            qtype,
        ));
        m.add_answers(records);
        Answer::parse(&m.to_vec().expect("encodes")).expect("answer")
    }

    #[test]
    fn a_name_on_the_chain_learns_only_the_addresses_its_own_resolution_leads_to() {
        // x.evil CNAME api.github.com, with an address of x.evil's own beside it ("CNAME and
        // other data", which a resolver that scrubs nothing passes through), and api.github.com
        // CNAME edge.cdn.example, whose address is the real one.
        let mut m = Message::response(9, OpCode::Query);
        m.add_query(Q::query(
            Name::from_str("x.evil.").expect("name"),
            RecordType::A,
        ));
        m.add_answers(vec![
            cname("x.evil.", 60, "api.github.com."),
            a("x.evil.", 60, "192.0.2.66"),
            cname("api.github.com.", 60, "edge.cdn.example."),
            a("edge.cdn.example.", 60, "192.0.2.1"),
        ]);
        let answer = Answer::parse(&m.to_vec().expect("encodes")).expect("answer");
        assert_eq!(
            answer.names,
            ["x.evil", "api.github.com", "edge.cdn.example"]
        );
        let ips = |learned: Vec<(IpAddr, u32)>| -> Vec<String> {
            learned.iter().map(|(ip, _)| ip.to_string()).collect()
        };
        assert_eq!(ips(answer.learnable_for(0)), ["192.0.2.66", "192.0.2.1"]);
        assert_eq!(
            ips(answer.learnable_for(1)),
            ["192.0.2.1"],
            "x.evil's address is not api.github.com's"
        );
        assert_eq!(ips(answer.learnable_for(2)), ["192.0.2.1"]);
        assert_eq!(ips(answer.learnable()), ["192.0.2.66", "192.0.2.1"]);
    }

    #[test]
    fn only_addresses_of_the_type_asked_for_are_learnable() {
        let records = || {
            vec![
                a("api.github.com.", 60, "192.0.2.1"),
                aaaa("api.github.com.", 60, "2001:db8::1"),
            ]
        };
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            answer_to(RecordType::A, records()).learnable(),
            [(ip("192.0.2.1"), 60)]
        );
        assert_eq!(
            answer_to(RecordType::AAAA, records()).learnable(),
            [(ip("2001:db8::1"), 60)]
        );
        assert_eq!(answer_to(RecordType::ANY, records()).learnable().len(), 2);
        let txt = answer_to(RecordType::TXT, records());
        assert_eq!(
            txt.addresses.len(),
            2,
            "what the answer said is still reported"
        );
        assert!(
            txt.learnable().is_empty(),
            "an A record inside a TXT answer teaches nothing"
        );
        // Only the Internet class: an A record of class CHAOS names no address.
        let mut chaos = a("api.github.com.", 60, "192.0.2.9");
        chaos.dns_class = DNSClass::CH;
        assert_eq!(
            answer_to(
                RecordType::A,
                vec![chaos, a("api.github.com.", 60, "192.0.2.1")]
            )
            .learnable(),
            [(ip("192.0.2.1"), 60)]
        );
    }

    #[test]
    fn an_answer_must_repeat_the_one_question_with_its_class() {
        let q = Question {
            id: 9,
            name: "api.github.com".into(),
            qtype: RecordType::A,
            qclass: DNSClass::IN,
        };
        assert!(answer_to(RecordType::A, vec![]).answers(&q));
        let mut chaos = Message::response(9, OpCode::Query);
        let mut cq = Q::query(
            Name::from_str("api.github.com.").expect("name"),
            RecordType::A,
        );
        cq.set_query_class(DNSClass::CH);
        chaos.add_query(cq);
        assert!(
            !Answer::parse(&chaos.to_vec().expect("encodes"))
                .expect("answer")
                .answers(&q)
        );
        let mut two = Message::response(9, OpCode::Query);
        two.add_query(Q::query(
            Name::from_str("api.github.com.").expect("name"),
            RecordType::A,
        ));
        two.add_query(Q::query(
            Name::from_str("evil.example.").expect("name"),
            RecordType::A,
        ));
        assert!(
            !Answer::parse(&two.to_vec().expect("encodes"))
                .expect("answer")
                .answers(&q)
        );
        assert!(!answer_to(RecordType::A, vec![]).answers(&q.with_id(10)));
        assert_eq!(&with_id(&[0, 9, 1, 2], 0xabcd), &[0xab, 0xcd, 1, 2]);
    }
}
