//! Sending a query to the resolver the pod asked and taking back only its answer.
//!
//! Each UDP query leaves from a fresh socket (a fresh random port) connected to the resolver, so
//! the kernel drops datagrams from any other address or port; of what arrives, only a response
//! with the query's ID and question is taken (a stray or forged one is counted and skipped). TCP
//! uses one connection per query, with the two-byte length framing. The caller opens the
//! sockets (the sidecar marks its own so that its capture lets them pass).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::message::{Answer, Question};

/// Largest DNS message over UDP we accept (EDNS payloads are smaller in practice).
pub const MAX_UDP: usize = 4096;

/// The resolver did not answer usefully.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Socket trouble.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No matching answer in time.
    #[error("no answer from {resolver} within {timeout:?}")]
    Timeout {
        /// The resolver.
        resolver: SocketAddr,
        /// How long we waited.
        timeout: Duration,
    },
    /// The TCP answer did not parse or did not answer the question.
    #[error("bad answer from {resolver}: {why}")]
    BadAnswer {
        /// The resolver.
        resolver: SocketAddr,
        /// What was wrong.
        why: String,
    },
}

/// The resolver's reply, as received, and what it says.
#[derive(Debug)]
pub struct Reply {
    /// The bytes, to hand back to the pod unchanged.
    pub bytes: Vec<u8>,
    /// The parsed answer.
    pub answer: Answer,
    /// Datagrams that arrived on the query's socket but did not answer it (wrong ID or
    /// question, not a response): ignored.
    pub ignored: usize,
}

/// Asks over UDP, on `sock`: a fresh socket connected to the resolver.
pub async fn udp(
    sock: UdpSocket,
    query: &[u8],
    question: &Question,
    timeout: Duration,
) -> Result<Reply, ForwardError> {
    let resolver = sock.peer_addr()?;
    sock.send(query).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_UDP];
    let mut ignored = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Err(ForwardError::Timeout { resolver, timeout }),
        };
        match Answer::parse(&buf[..n]) {
            Ok(answer) if answer.answers(question) => {
                return Ok(Reply {
                    bytes: buf[..n].to_vec(),
                    answer,
                    ignored,
                });
            }
            _ => ignored += 1,
        }
    }
}

/// Asks over TCP, on a fresh connection to the resolver.
pub async fn tcp(
    mut stream: TcpStream,
    query: &[u8],
    question: &Question,
    timeout: Duration,
) -> Result<Reply, ForwardError> {
    let resolver = stream.peer_addr()?;
    let work = async {
        let len = u16::try_from(query.len())
            .map_err(|_| std::io::Error::other("query longer than 65535 bytes"))?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        let n = stream.read_u16().await? as usize;
        let mut bytes = vec![0u8; n];
        stream.read_exact(&mut bytes).await?;
        Ok::<_, std::io::Error>(bytes)
    };
    let bytes = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r?,
        Err(_) => return Err(ForwardError::Timeout { resolver, timeout }),
    };
    let answer = Answer::parse(&bytes).map_err(|e| ForwardError::BadAnswer {
        resolver,
        why: e.to_string(),
    })?;
    if !answer.answers(question) {
        return Err(ForwardError::BadAnswer {
            resolver,
            why: "the answer is for another query".into(),
        });
    }
    Ok(Reply {
        bytes,
        answer,
        ignored: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Query;
    use crate::message::tests::{a, answer_bytes, query_bytes};
    use hickory_proto::rr::RecordType;

    async fn connected(resolver: SocketAddr) -> UdpSocket {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        sock.connect(resolver).await.expect("connect");
        sock
    }

    /// A resolver on loopback that, for each query, first lets a forger answer from another
    /// port, then answers with a wrong ID itself, then answers properly.
    async fn resolver_with_forgery() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        let forger = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            while let Ok((n, client)) = sock.recv_from(&mut buf).await {
                let q = Query::parse(&buf[..n]).expect("query");
                let id = q.question.id;
                let name = format!("{}.", q.question.name);
                let forged = answer_bytes(id, &name, vec![a(&name, 300, "6.6.6.6")]);
                let _ = forger.send_to(&forged, client).await;
                let wrong_id = answer_bytes(id ^ 1, &name, vec![a(&name, 300, "6.6.6.7")]);
                let _ = sock.send_to(&wrong_id, client).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let real = answer_bytes(id, &name, vec![a(&name, 60, "192.0.2.10")]);
                let _ = sock.send_to(&real, client).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn only_the_resolvers_answer_to_this_query_is_taken() {
        let resolver = resolver_with_forgery().await;
        let bytes = query_bytes(4242, "api.github.com.", RecordType::A);
        let q = Query::parse(&bytes).expect("query");
        let reply = udp(
            connected(resolver).await,
            &bytes,
            &q.question,
            Duration::from_secs(2),
        )
        .await
        .expect("answer");
        assert_eq!(
            reply.answer.addresses,
            [("192.0.2.10".parse().expect("ip"), 60)]
        );
        assert_eq!(
            reply.ignored, 1,
            "the wrong ID was seen and skipped; the forger's datagram never arrived"
        );
    }

    #[tokio::test]
    async fn a_silent_resolver_times_out() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = silent.local_addr().expect("addr");
        let bytes = query_bytes(1, "a.com.", RecordType::A);
        let q = Query::parse(&bytes).expect("query");
        let err = udp(
            connected(addr).await,
            &bytes,
            &q.question,
            Duration::from_millis(100),
        )
        .await
        .expect_err("times out");
        assert!(matches!(err, ForwardError::Timeout { .. }));
    }

    #[tokio::test]
    async fn tcp_queries_are_framed_and_checked() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let n = s.read_u16().await.expect("len") as usize;
            let mut q = vec![0u8; n];
            s.read_exact(&mut q).await.expect("query");
            let q = Query::parse(&q).expect("query");
            let name = format!("{}.", q.question.name);
            let ans = answer_bytes(q.question.id, &name, vec![a(&name, 30, "192.0.2.20")]);
            s.write_u16(ans.len() as u16).await.expect("len");
            s.write_all(&ans).await.expect("answer");
        });
        let bytes = query_bytes(77, "big.example.com.", RecordType::A);
        let q = Query::parse(&bytes).expect("query");
        let stream = TcpStream::connect(addr).await.expect("connect");
        let reply = tcp(stream, &bytes, &q.question, Duration::from_secs(2))
            .await
            .expect("answer");
        assert_eq!(reply.answer.addresses.len(), 1);
        assert_eq!(
            Answer::parse(&reply.bytes).expect("same bytes"),
            reply.answer
        );
    }
}
