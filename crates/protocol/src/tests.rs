//! Round trips, malformed bytes and golden bytes for the wire format.

use super::*;

fn sample_assignment(key: &SigningKey) -> Assignment {
    Assignment {
        replica_id: 7,
        unit_id: 3,
        batch_id: 1,
        host_key: key.public_key(),
        module: ContentHash::of(b"module"),
        input: ContentHash::of(b"input"),
        seed: 42,
        fuel_limit: 1_000_000,
        memory_limit_bytes: 64 << 20,
        output_limit_bytes: 1 << 20,
        deadline_ms: 1_700_000_000_000,
    }
}

fn round_trip<T>(message: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let frame = encode_frame(message).expect("encode");
    let header: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("header");
    let len = decode_header(header).expect("header length");
    assert_eq!(len, frame.len() - HEADER_LEN);
    decode_body(&frame[HEADER_LEN..]).expect("decode")
}

#[test]
fn every_message_round_trips() {
    let key = SigningKey::from_seed([9; 32]);
    let signed = sample_assignment(&key).sign(&key).expect("sign");
    let report = Report {
        replica_id: 7,
        outcome: Outcome::Countable(RunResult {
            status: Status::Trap {
                kind: TrapKind::Unreachable,
                function: "main".into(),
            },
            fuel: 123,
            output_len: 5,
            output_hash: ContentHash::of(b"hello"),
        }),
    };
    let clients = vec![
        ClientMessage::Hello(
            Hello {
                protocol_version: PROTOCOL_VERSION,
                instrumentation_version: 1,
                host_key: key.public_key(),
                account_key: Some(AccountKey("0123abcd".into())),
                volunteer: "ada".into(),
                team: Some("lovelace".into()),
                cores: 4,
                held_replicas: vec![1, 300],
            }
            .sign(&key, &ChannelBinding([8; 32]))
            .expect("sign"),
        ),
        ClientMessage::RequestWork,
        ClientMessage::FetchBlob {
            hash: ContentHash::of(b"x"),
        },
        ClientMessage::Report {
            report: report.clone(),
            output: b"hello".to_vec(),
        },
        ClientMessage::Exchange {
            reports: vec![FinishedReplica {
                report,
                output: b"hello".to_vec(),
            }],
            want: 4,
            fuel_per_second: Some(2_500_000_000),
        },
        ClientMessage::Exchange {
            reports: Vec::new(),
            want: 0,
            fuel_per_second: None,
        },
        ClientMessage::Standing,
    ];
    for message in &clients {
        assert_eq!(&round_trip(message), message);
    }
    let servers = vec![
        ServerMessage::Welcome {
            project_key: key.public_key(),
            unneeded: vec![3, 7],
        },
        ServerMessage::Work(signed.clone()),
        ServerMessage::Standing(Standing {
            volunteer: "ada".into(),
            credit: 12.5,
            recent_average_credit: 1.25,
            rank: 2,
            volunteers: 9,
            team: Some(TeamStanding {
                name: "engines".into(),
                credit: 20.0,
                rank: 1,
                teams: 3,
            }),
        }),
        ServerMessage::Exchanged {
            accepted: vec![7, 9],
            refused: vec![RefusedReport {
                replica_id: 8,
                code: ErrorCode::NotYourReplica,
                message: "not yours".into(),
            }],
            work: vec![signed.clone(), signed],
            retry_after_ms: 0,
        },
        ServerMessage::NoWork {
            retry_after_ms: 500,
        },
        ServerMessage::Blob {
            hash: ContentHash::of(b"x"),
            bytes: vec![1, 2, 3],
        },
        ServerMessage::ReportAccepted { replica_id: 7 },
        ServerMessage::Error {
            code: ErrorCode::BadSignature,
            message: "no".into(),
        },
    ];
    for message in &servers {
        assert_eq!(&round_trip(message), message);
    }
}

#[test]
fn malformed_bytes_are_errors_not_panics() {
    let bodies: &[&[u8]] = &[
        &[],
        &[0xff],
        &[0, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[3, 1, 2, 3],
        &[200; 64],
    ];
    for body in bodies {
        assert!(
            decode_body::<ClientMessage>(body).is_err(),
            "{body:?} decoded"
        );
    }
    // A valid message followed by junk is refused too.
    let mut frame = encode_frame(&ClientMessage::RequestWork).expect("encode");
    frame.push(0);
    assert!(decode_body::<ClientMessage>(&frame[HEADER_LEN..]).is_err());
}

#[test]
fn oversized_frames_are_refused_from_the_header() {
    let header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
    assert!(matches!(
        decode_header(header),
        Err(FrameError::TooLarge { .. })
    ));
}

/// A hello as tests make it.
fn sample_hello(key: &SigningKey) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        instrumentation_version: 1,
        host_key: key.public_key(),
        account_key: Some(AccountKey("secret".into())),
        volunteer: "ada".into(),
        team: Some("engines".into()),
        cores: 2,
        held_replicas: vec![5, 9],
    }
}

#[test]
fn hello_golden_bytes() {
    // Pins the encoding of the handshake: variant 0, then the version, first; the proof last.
    let hello = ClientMessage::Hello(SignedHello {
        hello: Hello {
            protocol_version: 7,
            instrumentation_version: 1,
            host_key: PublicKey([0; 32]),
            account_key: Some(AccountKey("k".into())),
            volunteer: "a".into(),
            team: None,
            cores: 2,
            held_replicas: vec![5],
        },
        proof: Signature(vec![7; 64]),
    });
    let frame = encode_frame(&hello).expect("encode");
    let mut expected = vec![0, 0, 0, 109, 0, 7, 1];
    expected.extend_from_slice(&[0; 32]);
    expected.extend_from_slice(&[1, 1, b'k', 1, b'a', 0, 2, 1, 5, 64]);
    expected.extend_from_slice(&[7; 64]);
    assert_eq!(frame, expected);
    assert_eq!(hello_version(&frame[HEADER_LEN..]), Some(7));
}

#[test]
fn an_account_key_never_appears_in_a_hellos_debug_text() {
    // Hellos are logged; the key they carry must not be.
    let key = SigningKey::from_seed([3; 32]);
    let text = format!(
        "{:?}",
        sample_hello(&key).sign(&key, &ChannelBinding([1; 32]))
    );
    assert!(text.contains("AccountKey(..)"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

#[test]
fn a_hello_proof_signs_the_binding_then_the_hello_under_its_own_domain() {
    // Pins what the proof covers, so both ends of every version compute the same bytes.
    let key = SigningKey::from_seed([3; 32]);
    let channel = ChannelBinding([0xab; 32]);
    let signed = sample_hello(&key).sign(&key, &channel).expect("sign");
    let mut message = vec![0xab; 32];
    message.extend_from_slice(&postcard::to_allocvec(&signed.hello).expect("encode"));
    assert_eq!(
        key.public_key()
            .verify(b"herd hello v1\0", &message, &signed.proof),
        Ok(())
    );
    // Ed25519 signatures are deterministic: the same hello on the same channel, the same proof.
    assert_eq!(
        sample_hello(&key).sign(&key, &channel).expect("sign"),
        signed
    );
    // Under an assignment's domain the same signature is worthless.
    assert!(
        key.public_key()
            .verify(b"herd assignment v1\0", &message, &signed.proof)
            .is_err()
    );
}

#[test]
fn a_hello_proves_its_key_only_on_its_own_connection() {
    let key = SigningKey::from_seed([3; 32]);
    let here = ChannelBinding([1; 32]);
    let elsewhere = ChannelBinding([2; 32]);
    let signed = sample_hello(&key).sign(&key, &here).expect("sign");
    assert_eq!(signed.verify(&here), Ok(&signed.hello));
    // Replayed on another connection.
    assert_eq!(signed.verify(&elsewhere), Err(SignatureError::Invalid));
    // Signed by someone else for a key they do not hold (every host key is public).
    let victim = SigningKey::from_seed([4; 32]);
    let mut claim = sample_hello(&key);
    claim.host_key = victim.public_key();
    let forged = claim.sign(&key, &here).expect("sign");
    assert_eq!(forged.verify(&here), Err(SignatureError::Invalid));
    // Any claim changed after signing: the volunteer, the team, the replicas held.
    for tamper in [
        (|h: &mut Hello| h.volunteer = "mallory".into()) as fn(&mut Hello),
        |h| h.team = Some("mallory-team".into()),
        |h| h.account_key = Some(AccountKey("another".into())),
        |h| h.held_replicas.clear(),
        |h| h.cores = 64,
    ] {
        let mut tampered = signed.clone();
        tamper(&mut tampered.hello);
        assert_eq!(tampered.verify(&here), Err(SignatureError::Invalid));
    }
    // A proof of the wrong length, or none, is an error, not a panic.
    let mut cut = signed.clone();
    cut.proof.0.truncate(63);
    assert!(cut.verify(&here).is_err());
    cut.proof.0.clear();
    assert!(cut.verify(&here).is_err());
}

#[test]
fn the_version_of_an_older_hello_is_read_though_its_shape_differs() {
    // Exactly the bytes a protocol-4 worker sends (no proof): not a version-5 message, yet its
    // version is readable, so the coordinator can refuse it by name.
    let mut v4 = vec![0, 4, 1];
    v4.extend_from_slice(&[0; 32]);
    v4.extend_from_slice(&[1, b'a', 0, 2, 1, 5]);
    assert!(decode_body::<ClientMessage>(&v4).is_err());
    assert_eq!(hello_version(&v4), Some(4));
    // Not a hello at all, or cut short: no version.
    assert_eq!(hello_version(&[1]), None);
    assert_eq!(hello_version(&[]), None);
    assert_eq!(hello_version(&[0]), None);
    assert_eq!(hello_version(&[0, 0xff]), None);
}

#[test]
fn request_and_report_golden_bytes() {
    assert_eq!(
        encode_frame(&ClientMessage::RequestWork).expect("encode"),
        vec![0, 0, 0, 1, 1]
    );
    assert_eq!(
        encode_frame(&ServerMessage::NoWork {
            retry_after_ms: 300
        })
        .expect("encode"),
        vec![0, 0, 0, 3, 2, 0xac, 0x02]
    );
    // A refusal's encoding is the same in every version (variant 5, the code, the message), and
    // codes are only ever appended, so a worker of any version reads why it was refused.
    let refusal = |code| {
        encode_frame(&ServerMessage::Error {
            code,
            message: "x".into(),
        })
        .expect("encode")
    };
    assert_eq!(
        refusal(ErrorCode::UnsupportedVersion),
        vec![0, 0, 0, 4, 5, 0, 1, b'x']
    );
    assert_eq!(
        refusal(ErrorCode::BadSignature),
        vec![0, 0, 0, 4, 5, 3, 1, b'x']
    );
    assert_eq!(
        refusal(ErrorCode::NotAllowed),
        vec![0, 0, 0, 4, 5, 9, 1, b'x']
    );
    assert_eq!(
        refusal(ErrorCode::NotAssigned),
        vec![0, 0, 0, 4, 5, 10, 1, b'x']
    );
    assert_eq!(
        refusal(ErrorCode::UnknownAccount),
        vec![0, 0, 0, 4, 5, 11, 1, b'x']
    );
    assert_eq!(
        refusal(ErrorCode::AccountRequired),
        vec![0, 0, 0, 4, 5, 12, 1, b'x']
    );
}

#[test]
fn signatures_check_out_and_tampering_is_caught() {
    let project = SigningKey::from_seed([1; 32]);
    let other = SigningKey::from_seed([2; 32]);
    let mut signed = sample_assignment(&other).sign(&project).expect("sign");
    assert_eq!(signed.verify(&project.public_key()), Ok(()));
    assert_eq!(
        signed.verify(&other.public_key()),
        Err(SignatureError::Invalid)
    );
    signed.assignment.fuel_limit += 1;
    assert_eq!(
        signed.verify(&project.public_key()),
        Err(SignatureError::Invalid)
    );
    // A truncated signature is an error, not a panic.
    signed.signature.0.truncate(10);
    assert!(signed.verify(&project.public_key()).is_err());
}

#[test]
fn report_golden_bytes() {
    // Pins a report's encoding: variant 3, replica 1, `Aborted` (1) `Cancelled` (1), one output
    // byte. No signature: the connection the hello proved is what makes it the host's.
    let report = ClientMessage::Report {
        report: Report {
            replica_id: 1,
            outcome: Outcome::Aborted(AbortReason::Cancelled),
        },
        output: vec![9],
    };
    let frame = encode_frame(&report).expect("encode");
    assert_eq!(frame, vec![0, 0, 0, 6, 3, 1, 1, 1, 1, 9]);
}

#[test]
fn content_hashes_parse_and_refuse_junk() {
    let hash = ContentHash::of(b"abc");
    assert_eq!(hash.to_hex().parse::<ContentHash>().expect("parse"), hash);
    assert!("zz".parse::<ContentHash>().is_err());
    assert!("00".parse::<ContentHash>().is_err());
}

#[test]
fn json_forms_are_readable() {
    let result = RunResult {
        status: Status::Trap {
            kind: TrapKind::Unreachable,
            function: "f".into(),
        },
        fuel: 5,
        output_len: 0,
        output_hash: ContentHash::of(b""),
    };
    let json = serde_json::to_value(&result).expect("json");
    assert_eq!(
        json["status"],
        serde_json::json!({"trap": {"kind": "unreachable", "function": "f"}})
    );
    assert_eq!(json["output_hash"], ContentHash::of(b"").to_hex());
    let back: RunResult = serde_json::from_value(json).expect("parse");
    assert_eq!(back, result);
}
