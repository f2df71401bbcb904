//! QUIC on 127.0.0.1: a pinned connection carries framed messages; a wrong pin is refused; an
//! oversized frame is refused from its header; a peer that never answers is given up on.

use std::time::Duration;

use herd_net::{
    JoinString, NetError, Unpaced, connect, generate_certificate, read_message, request,
    request_within, server_endpoint, write_message,
};
use herd_protocol::{ClientMessage, PublicKey, ServerMessage};

fn join_for(endpoint: &herd_net::Endpoint, cert_sha256: String) -> JoinString {
    JoinString {
        addrs: vec![endpoint.local_addr().expect("addr")],
        cert_sha256,
        project_key: PublicKey([1; 32]),
    }
}

/// A server on 127.0.0.1 with a fresh certificate, running `serve` on each connection it
/// accepts; the endpoint and the certificate.
fn serve<F, Fut>(serve: F) -> (herd_net::Endpoint, herd_net::Certificate)
where
    F: Fn(herd_net::Connection) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let cert = generate_certificate().expect("cert");
    let server = server_endpoint(
        "127.0.0.1:0".parse().expect("addr"),
        &cert.cert_der,
        &cert.key_der,
        &[9; 32],
    )
    .expect("server");
    let accept = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            let Ok(connection) = incoming.await else {
                continue;
            };
            tokio::spawn(serve(connection));
        }
    });
    (server, cert)
}

#[tokio::test]
async fn a_pinned_connection_carries_messages_and_a_wrong_pin_is_refused() {
    let (server, cert) = serve(|connection| async move {
        while let Ok((mut send, mut recv)) = connection.accept_bi().await {
            let answer = match read_message::<ClientMessage>(&mut recv).await {
                Ok(ClientMessage::RequestWork) => ServerMessage::NoWork { retry_after_ms: 7 },
                Ok(_) => ServerMessage::NoWork { retry_after_ms: 1 },
                Err(NetError::Frame(_)) => ServerMessage::NoWork { retry_after_ms: 0 },
                Err(_) => return,
            };
            let _ = write_message(&mut send, &answer).await;
            let _ = send.finish();
        }
    });

    let good = join_for(&server, herd_net::fingerprint(&cert.cert_der));
    let connection = connect(&good).await.expect("pinned connect");
    let answer: ServerMessage = request(&connection, &ClientMessage::RequestWork)
        .await
        .expect("request");
    assert_eq!(answer, ServerMessage::NoWork { retry_after_ms: 7 });

    // A header announcing more than the limit is refused before any body is read.
    let (mut send, mut recv) = connection.open_bi().await.expect("stream");
    send.write_all(&u32::MAX.to_be_bytes())
        .await
        .expect("write");
    send.finish().expect("finish");
    let answer: ServerMessage = read_message(&mut recv).await.expect("answer");
    assert_eq!(answer, ServerMessage::NoWork { retry_after_ms: 0 });

    let wrong = join_for(&server, "00".repeat(32));
    let error = connect(&wrong).await.expect_err("wrong pin refused");
    assert!(
        matches!(&error, NetError::CertificateMismatch { message, .. } if message.contains("does not match")),
        "{error}"
    );
}

#[tokio::test]
async fn a_request_the_peer_never_answers_fails_and_closes_the_connection() {
    // Reads every request and keeps its stream open without a word: a coordinator stuck on it.
    let (server, cert) = serve(|connection| async move {
        let mut held = Vec::new();
        while let Ok((send, mut recv)) = connection.accept_bi().await {
            let _ = read_message::<ClientMessage>(&mut recv).await;
            held.push((send, recv));
        }
    });
    let connection = connect(&join_for(&server, herd_net::fingerprint(&cert.cert_der)))
        .await
        .expect("pinned connect");
    let within = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let error =
        request_within::<_, ServerMessage>(&connection, &ClientMessage::Standing, &Unpaced, within)
            .await
            .expect_err("no answer came");
    assert!(
        matches!(error, NetError::NoAnswer(d) if d == within),
        "{error}"
    );
    assert!(
        started.elapsed() >= within,
        "not given up before the deadline"
    );
    assert!(
        error.to_string().contains("no answer within 300ms"),
        "{error}"
    );
    // The connection is closed, so every other request on it fails at once rather than wait.
    assert!(connection.close_reason().is_some());
    let again = request::<_, ServerMessage>(&connection, &ClientMessage::Standing)
        .await
        .expect_err("the connection is closed");
    assert!(matches!(again, NetError::Connection(_)), "{again}");
}
