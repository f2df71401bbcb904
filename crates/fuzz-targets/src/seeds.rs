//! Valid inputs for each target, made from the real types: the starting corpus of a fuzzing run
//! (`cargo run -p herd-fuzz-targets --bin herd-fuzz-seeds` writes them into `fuzz/corpus/`), and
//! inputs the replay runs whatever the corpus holds, so each target's accepting path is covered
//! even before any fuzzing.

use herd_protocol::{
    AccountKey, Assignment, ChannelBinding, ClientMessage, ContentHash, ErrorCode, FinishedReplica,
    Hello, Outcome, PROTOCOL_VERSION, Report, RunResult, ServerMessage, SigningKey, Standing,
    Status, encode_frame,
};

/// The connection every seed hello is signed for, and the one [`crate::hello`] checks proofs
/// against: a seed's proof verifies, a mutated one must not panic.
pub(crate) const CHANNEL: ChannelBinding = ChannelBinding([7; 32]);

/// The seeds of the target called `target` (none for a name that is not a target).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "client_message" => client_messages().iter().map(body).collect(),
        "server_message" => server_messages().iter().map(body).collect(),
        "hello" => vec![body(&ClientMessage::Hello(signed_hello()))],
        "join_string" => vec![
            b"herd://127.0.0.1:4433?cert=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08&key=3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29".to_vec(),
            b"herd://10.0.0.1:4433,[::1]:9000?cert=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855&key=3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29".to_vec(),
        ],
        "preferences" => vec![
            b"cpu_percent = 50\nmax_cores = 2\ncompute_windows = [\"mon-fri 18:00-08:00\", \"sat,sun 00:00-24:00\"]\n".to_vec(),
            b"memory_mb = 512\nonly_when_idle = false\0cpu_percent=25\nnetwork_windows=[\"mon 09:00-17:00\"]".to_vec(),
        ],
        "spool" => {
            let assigned = encode_frame(&assignment()).expect("encodes");
            let finished = encode_frame(&finished()).expect("encodes");
            vec![[&[0u8][..], &assigned].concat(), [&[1u8][..], &finished].concat()]
        }
        "compiled_cache" => vec![vec![0], vec![0, 1, 0, 0xff], vec![0, 0, 1], vec![1]],
        "batch_request" => vec![
            format!(
                r#"{{"module":"{h}","quorum":2,"fuel":1000000,"memory_mb":64,"units":[{{"name":"a.txt","input":"{h}"}},{{"name":"b","input":"{h}","seed":7}}]}}"#,
                h = ContentHash::of(b"x").to_hex()
            )
            .into_bytes(),
            format!(
                r#"{{"module":"{h}","quorum":1,"initial_replicas":2,"adaptive":{{"trust_after":5,"spot_check":0.1}},"bid":"1.5","priority":-3,"units":[{{"name":"u","input":"{h}"}}]}}"#,
                h = ContentHash::of(b"y").to_hex()
            )
            .into_bytes(),
        ],
        "bulk_upload" => vec![
            [&3u32.to_be_bytes()[..], b"abc", &0u32.to_be_bytes(), &1u32.to_be_bytes(), b"z"]
                .concat(),
        ],
        "sweep" => vec![
            b"x={x} y={y}\nx=0..4\ny=a,b,c".to_vec(),
            b"t {t}\nt=0.5..2.0:0.25".to_vec(),
        ],
        "module_admission" => herd_samples::ALL
            .iter()
            .map(|(_, wasm, _)| [&[0u8][..], wasm].concat())
            .chain([vec![1; 64]])
            .collect(),
        _ => Vec::new(),
    }
}

fn body<T: serde::Serialize>(message: &T) -> Vec<u8> {
    encode_frame(message).expect("encodes")[herd_protocol::HEADER_LEN..].to_vec()
}

fn host_key() -> SigningKey {
    SigningKey::from_seed([3; 32])
}

fn signed_hello() -> herd_protocol::SignedHello {
    let key = host_key();
    Hello {
        protocol_version: PROTOCOL_VERSION,
        instrumentation_version: herd_sandbox::INSTRUMENTATION_VERSION,
        host_key: key.public_key(),
        account_key: Some(AccountKey("k".repeat(32))),
        volunteer: "ada".into(),
        team: Some("lovelace".into()),
        cores: 4,
        held_replicas: vec![1, 2, 300],
    }
    .sign(&key, &CHANNEL)
    .expect("signs")
}

fn assignment() -> herd_protocol::SignedAssignment {
    Assignment {
        replica_id: 11,
        unit_id: 5,
        batch_id: 2,
        host_key: host_key().public_key(),
        module: ContentHash::of(b"module"),
        input: ContentHash::of(b"input"),
        seed: 99,
        fuel_limit: 1 << 30,
        memory_limit_bytes: 64 << 20,
        output_limit_bytes: 1 << 20,
        deadline_ms: 1_800_000_000_000,
    }
    .sign(&SigningKey::from_seed([9; 32]))
    .expect("signs")
}

fn finished() -> FinishedReplica {
    FinishedReplica {
        report: Report {
            replica_id: 11,
            outcome: Outcome::Countable(RunResult {
                status: Status::Success,
                fuel: 123_456,
                output_len: 3,
                output_hash: ContentHash::of(b"out"),
            }),
        },
        output: b"out".to_vec(),
    }
}

fn client_messages() -> Vec<ClientMessage> {
    vec![
        ClientMessage::Hello(signed_hello()),
        ClientMessage::RequestWork,
        ClientMessage::FetchBlob {
            hash: ContentHash::of(b"input"),
        },
        ClientMessage::Report {
            report: finished().report,
            output: finished().output,
        },
        ClientMessage::Exchange {
            reports: vec![finished(), finished()],
            want: 2,
            fuel_per_second: Some(1 << 32),
        },
        ClientMessage::Standing,
    ]
}

fn server_messages() -> Vec<ServerMessage> {
    vec![
        ServerMessage::Welcome {
            project_key: SigningKey::from_seed([9; 32]).public_key(),
            unneeded: vec![4],
        },
        ServerMessage::Work(assignment()),
        ServerMessage::NoWork {
            retry_after_ms: 500,
        },
        ServerMessage::Blob {
            hash: ContentHash::of(b"abc"),
            bytes: b"abc".to_vec(),
        },
        ServerMessage::Error {
            code: ErrorCode::NotAssigned,
            message: "no".into(),
        },
        ServerMessage::Exchanged {
            accepted: vec![1],
            refused: vec![herd_protocol::RefusedReport {
                replica_id: 2,
                code: ErrorCode::UnknownReplica,
                message: "gone".into(),
            }],
            work: vec![assignment()],
            retry_after_ms: 0,
        },
        ServerMessage::Standing(Standing {
            volunteer: "ada".into(),
            credit: 12.5,
            recent_average_credit: f64::NAN,
            rank: 1,
            volunteers: 3,
            team: None,
        }),
    ]
}
