//! The bodies of Herd's fuzz targets: one function for each decoder of bytes that come from
//! outside (the network, a volunteer's disk, a researcher's request or command line, a module),
//! each feeding the decoder arbitrary bytes and checking what it must keep whatever they are:
//! no panic, and the invariant named in its doc (a decoded message encodes to bytes that decode
//! to the same message, a parsed value stays within its documented bounds, an accepted cache
//! entry is the sound one).
//!
//! Two runners call them: `fuzz/` (cargo fuzz, libFuzzer's coverage-guided search, one binary per
//! target, run for minutes or hours) and `tests/replay.rs` (every input of `fuzz/corpus/` and
//! `fuzz/regressions/` and every seed, in the normal suite). A crash found by the first becomes a
//! file in `fuzz/regressions/<target>/`, which the second replays for ever.

mod seeds;

use std::sync::OnceLock;

use herd_protocol::{
    ClientMessage, ContentHash, HEADER_LEN, MAX_FRAME_LEN, ServerMessage, decode_body,
    decode_header, encode_frame, hello_version,
};

pub use seeds::seeds;

/// A target: its name (the directory of its corpus) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("client_message", client_message),
    ("server_message", server_message),
    ("hello", hello),
    ("join_string", join_string),
    ("preferences", preferences),
    ("spool", spool),
    ("compiled_cache", compiled_cache),
    ("batch_request", batch_request),
    ("bulk_upload", bulk_upload),
    ("sweep", sweep),
    ("module_admission", module_admission),
];

/// A frame body as the coordinator reads it from a worker: any message that decodes re-encodes
/// to a frame that decodes to the same message.
pub fn client_message(data: &[u8]) {
    frame_round_trip::<ClientMessage>(data);
}

/// A frame body as a worker reads it from a coordinator, as [`client_message`].
pub fn server_message(data: &[u8]) {
    frame_round_trip::<ServerMessage>(data);
}

/// A frame header refuses a length over the limit and only that; a body that decodes as `T`
/// survives encoding and decoding again unchanged (compared as bytes: a `Standing`'s credit is a
/// float, which may be NaN).
fn frame_round_trip<T>(data: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    if let Some(header) = data.first_chunk::<HEADER_LEN>() {
        let announced = u32::from_be_bytes(*header) as usize;
        assert_eq!(
            decode_header(*header).is_ok(),
            announced <= MAX_FRAME_LEN,
            "a header of {announced} bytes"
        );
    }
    let message: T = decode_body(data).ok()?;
    let frame = encode_frame(&message).expect("a decoded message encodes");
    let body = &frame[HEADER_LEN..];
    let again: T = decode_body(body).expect("an encoded message decodes");
    let frame_again = encode_frame(&again).expect("a decoded message encodes");
    assert_eq!(frame_again, frame, "decode(encode(message)) changed it");
    Some(message)
}

/// The first message of a connection, as the coordinator reads it: a body that decodes as a
/// hello has the version [`hello_version`] reads without decoding it (which is what refuses
/// another version's worker by name), and its proof is checked without panicking.
pub fn hello(data: &[u8]) {
    let version = hello_version(data);
    if let Some(ClientMessage::Hello(signed)) = frame_round_trip::<ClientMessage>(data) {
        assert_eq!(
            version,
            Some(signed.hello.protocol_version),
            "hello_version disagrees with the decoded hello"
        );
        let _ = signed.verify(&seeds::CHANNEL);
    }
}

/// A join string a volunteer pastes: one that parses prints as a string that parses to the same
/// project, with at least one address.
pub fn join_string(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(join) = text.parse::<herd_net::JoinString>() else {
        return;
    };
    assert!(!join.addrs.is_empty(), "a join string without an address");
    let printed = join.to_string();
    assert_eq!(
        printed.parse::<herd_net::JoinString>().as_ref(),
        Ok(&join),
        "`{printed}` does not parse back"
    );
}

/// A volunteer's preferences file, then its `--pref KEY=VALUE` overrides, one per line after a
/// NUL byte: what parses is within the bounds the preferences document.
pub fn preferences(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, overrides) = text.split_once('\0').unwrap_or((text, ""));
    let overrides: Vec<String> = overrides.lines().map(str::to_string).collect();
    let Ok(prefs) = herd_worker::preferences::Preferences::parse(file, &overrides) else {
        return;
    };
    assert!((1..=100).contains(&prefs.cpu_percent), "{prefs:?}");
    assert!(prefs.max_cores.is_none_or(|n| (1..=256).contains(&n)));
    assert!((64..=1_048_576).contains(&prefs.memory_mb));
    assert!((0..=100).contains(&prefs.suspend_above_load_percent));
    for window in prefs.compute_windows.iter().chain(&prefs.network_windows) {
        assert!(window.days < 1 << 7, "{window:?}");
        assert!(
            window.start < 24 * 60 && window.end <= 24 * 60,
            "{window:?}"
        );
    }
}

/// A file of the worker's spool, as it reads it back after a crash (the first byte chooses the
/// directory: even `assigned/`, odd `finished/`): what decodes re-encodes to a file that decodes
/// to the same value.
pub fn spool(data: &[u8]) {
    use herd_worker::spool::{decode_assigned, decode_finished};
    let Some((&which, file)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        if let Some(assigned) = decode_assigned(file) {
            let again = encode_frame(&assigned).expect("encodes");
            assert_eq!(decode_assigned(&again).as_ref(), Some(&assigned));
        }
    } else if let Some(finished) = decode_finished(file) {
        let again = encode_frame(&finished).expect("encodes");
        assert_eq!(decode_finished(&again).as_ref(), Some(&finished));
    }
}

/// The compiled-module cache, kept on a volunteer's disk: a sandbox loads an entry only if it is
/// byte for byte the one it wrote. The first byte chooses how the entry is damaged: even, the
/// sound entry with the rest of the input as edits (pairs of a 2-byte offset and a byte to XOR
/// there, and a final odd byte cutting the entry at that offset); odd, the rest of the input is
/// the whole entry.
pub fn compiled_cache(data: &[u8]) {
    struct Cache {
        _dir: tempfile::TempDir,
        sandbox: herd_sandbox::Sandbox,
        module: ContentHash,
        sound: Vec<u8>,
    }
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let sandbox = herd_sandbox::Sandbox::with_disk_cache(dir.path()).expect("a sandbox");
        let wasm = herd_samples::PRIMES_WASM;
        sandbox.admit(wasm).expect("the sample is admitted");
        let module = ContentHash::of(wasm);
        let sound = sandbox
            .disk_cache_entry(&module)
            .expect("admitting wrote the cache entry");
        Cache {
            _dir: dir,
            sandbox,
            module,
            sound,
        }
    });
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let entry = if mode % 2 == 1 {
        rest.to_vec()
    } else {
        let mut entry = cache.sound.clone();
        let mut edits = rest.chunks_exact(3);
        for edit in edits.by_ref() {
            let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) * 16 % entry.len();
            entry[at] ^= edit[2];
        }
        if let [a, b] = edits.remainder() {
            entry.truncate(usize::from(u16::from_le_bytes([*a, *b])) * 16);
        }
        entry
    };
    let loaded = cache.sandbox.load_disk_cache_entry(&cache.module, &entry);
    assert_eq!(
        loaded,
        entry == cache.sound,
        "a cache entry {} the sound one was {}",
        if entry == cache.sound {
            "equal to"
        } else {
            "unlike"
        },
        if loaded { "loaded" } else { "refused" }
    );
}

/// `POST /api/v1/batches`' JSON body: a batch the API accepts has 1 to the limit of units, each
/// with a name usable as a file name, a policy that passes its own checks, and fuel to run.
pub fn batch_request(data: &[u8]) {
    let Ok(batch) = herd_coordinator::fuzzing::batch_request(data) else {
        return;
    };
    assert!(!batch.units.is_empty() && batch.units.len() <= 100_000);
    batch
        .policy
        .validate()
        .expect("an accepted policy is valid");
    assert!(batch.fuel_limit >= 1);
    assert!((-100..=100).contains(&batch.priority));
    for unit in &batch.units {
        assert!(
            !unit.name.is_empty() && unit.name.len() <= 255,
            "{:?}",
            unit.name
        );
        assert!(!unit.name.contains(['/', '\\', '\0']), "{:?}", unit.name);
        assert!(unit.name != "." && unit.name != "..");
    }
}

/// `POST /api/v1/blobs`' body: an accepted upload holds at least one blob, none over the limit,
/// and framing its blobs again gives back the body byte for byte.
pub fn bulk_upload(data: &[u8]) {
    let Ok(blobs) = herd_coordinator::fuzzing::bulk_upload(data) else {
        return;
    };
    assert!(!blobs.is_empty(), "an empty upload was accepted");
    let mut framed = Vec::with_capacity(data.len());
    for blob in &blobs {
        assert!(blob.len() <= herd_sandbox::MAX_MODULE_BYTES);
        framed.extend_from_slice(&(blob.len() as u32).to_be_bytes());
        framed.extend_from_slice(blob);
    }
    assert_eq!(framed, data, "the blobs do not frame back to the body");
}

/// `herd submit --template --sweep`: the template is the input's first line, each further line
/// one `--sweep NAME=SPEC`. A sweep that is accepted makes 1 to the limit of units, named apart.
pub fn sweep(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let template = lines.next().unwrap_or_default();
    let sweeps: Vec<String> = lines.map(str::to_string).collect();
    let Ok(units) = herd::sweep::inputs(template, &sweeps) else {
        return;
    };
    assert!(!units.is_empty() && units.len() <= herd::sweep::MAX_UNITS);
}

/// A module a researcher submits, as the coordinator admits it: arbitrary bytes (first byte
/// even) or a module wasm-smith makes from the rest (odd), which admission either refuses with a
/// reason or compiles.
pub fn module_admission(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let wasm = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let mut u = arbitrary::Unstructured::new(rest);
        // Valid modules of every shape; the mutants of the sample modules (even first byte,
        // seeded from them) are what gets past admission's interface checks.
        let Ok(module) = wasm_smith::Module::new(wasm_smith::Config::default(), &mut u) else {
            return;
        };
        module.to_bytes()
    };
    // A fresh sandbox each time: one keeps every module it admitted.
    let sandbox = herd_sandbox::Sandbox::new().expect("a sandbox");
    if let Err(refusal) = sandbox.admit(&wasm) {
        assert!(
            !refusal.to_string().is_empty(),
            "a refusal without a reason"
        );
    }
}
