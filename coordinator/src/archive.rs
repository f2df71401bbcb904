//! A batch's results as one tar archive: every validated unit's output, named after the unit,
//! in unit order. The layout is computed before a byte is sent (deterministic headers: mode
//! 0644, owner 0, time 0), so the archive has a known length, can be streamed blob by blob,
//! and can be resumed from any offset (an HTTP Range). Its ETag names the set of outputs, so a
//! resumed download never splices two different archives.
//!
//! Format: POSIX ustar headers; a name longer than 100 bytes is carried by a GNU long-name
//! entry (`././@LongLink`, type `L`) before its header, as GNU tar and the `tar` crate read.

use herd_protocol::ContentHash;

const BLOCK: u64 = 512;

/// One file of the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) hash: ContentHash,
    pub(crate) len: u64,
}

/// Where each entry's bytes start, and the archive's total length.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// For each entry: its headers' offset, and its data's offset.
    pub(crate) offsets: Vec<(u64, u64)>,
    pub(crate) total: u64,
}

fn padded(len: u64) -> u64 {
    len.div_ceil(BLOCK) * BLOCK
}

/// One ustar header block.
fn block(name: &[u8], size: u64, kind: u8) -> [u8; 512] {
    let mut header = [0u8; 512];
    let name = &name[..name.len().min(100)];
    header[..name.len()].copy_from_slice(name);
    let octal = |field: &mut [u8], value: u64| {
        let digits = field.len() - 1;
        let text = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(text.as_bytes());
    };
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], size);
    octal(&mut header[136..148], 0);
    header[156] = kind;
    header[257..265].copy_from_slice(b"ustar  \0");
    // The checksum counts its own field as spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
    header
}

/// The header bytes of an entry: a long-name entry first when the name needs one.
pub(crate) fn headers(entry: &Entry) -> Vec<u8> {
    let name = entry.name.as_bytes();
    let mut bytes = Vec::new();
    if name.len() > 100 {
        let long = name.len() as u64 + 1;
        bytes.extend_from_slice(&block(b"././@LongLink", long, b'L'));
        bytes.extend_from_slice(name);
        bytes.resize(bytes.len() + (padded(long) - name.len() as u64) as usize, 0);
    }
    bytes.extend_from_slice(&block(name, entry.len, b'0'));
    bytes
}

fn headers_len(entry: &Entry) -> u64 {
    let name = entry.name.len() as u64;
    BLOCK
        + if name > 100 {
            BLOCK + padded(name + 1)
        } else {
            0
        }
}

/// The archive's layout: each entry's offsets and the total, two zero blocks at the end.
pub(crate) fn layout(entries: &[Entry]) -> Layout {
    let mut offset = 0;
    let offsets = entries
        .iter()
        .map(|entry| {
            let start = offset;
            let data = start + headers_len(entry);
            offset = data + padded(entry.len);
            (start, data)
        })
        .collect();
    Layout {
        offsets,
        total: offset + 2 * BLOCK,
    }
}

/// The archive's ETag: the hash of what it holds, in order.
pub(crate) fn etag(entries: &[Entry]) -> String {
    let mut hasher = blake3::Hasher::new();
    for entry in entries {
        hasher.update(entry.name.as_bytes());
        hasher.update(&[0]);
        hasher.update(entry.hash.to_hex().as_bytes());
    }
    format!("\"{}\"", &hasher.finalize().to_hex()[..32])
}

/// The bytes of the archive from `start` on, for an entry: its headers, data and padding, given
/// its data. `entry_start` is the entry's first byte in the archive.
pub(crate) fn entry_bytes(entry: &Entry, data: &[u8]) -> Vec<u8> {
    let mut bytes = headers(entry);
    bytes.extend_from_slice(data);
    bytes.resize(bytes.len() + (padded(entry.len) - entry.len) as usize, 0);
    bytes
}

/// A byte range asked for with `Range: bytes=START-` or `bytes=START-END` (one range only).
/// `Ok(None)` without a usable header; `Err` if it asks for nothing the archive has.
pub(crate) fn parse_range(header: Option<&str>, total: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Several ranges: answered whole, as HTTP allows.
        return Ok(None);
    }
    let Some((start, end)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (start, end) = match (start.trim(), end.trim()) {
        ("", "") => return Ok(None),
        // The last N bytes.
        ("", last) => {
            let last: u64 = last.parse().map_err(|_| ())?;
            (total.saturating_sub(last), total.saturating_sub(1))
        }
        (start, "") => (start.parse().map_err(|_| ())?, total.saturating_sub(1)),
        (start, end) => (
            start.parse().map_err(|_| ())?,
            end.parse::<u64>()
                .map_err(|_| ())?
                .min(total.saturating_sub(1)),
        ),
    };
    if start > end || start >= total {
        return Err(());
    }
    Ok(Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn entries() -> Vec<(Entry, Vec<u8>)> {
        let long = "n".repeat(180);
        [
            ("a", 700usize),
            ("empty", 0),
            (long.as_str(), 1024),
            ("b", 1),
        ]
        .iter()
        .map(|(name, len)| {
            let data: Vec<u8> = (0..*len).map(|i| (i % 251) as u8).collect();
            (
                Entry {
                    name: name.to_string(),
                    hash: ContentHash::of(&data),
                    len: *len as u64,
                },
                data,
            )
        })
        .collect()
    }

    fn archive(entries: &[(Entry, Vec<u8>)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (entry, data) in entries {
            bytes.extend(entry_bytes(entry, data));
        }
        bytes.resize(bytes.len() + 1024, 0);
        bytes
    }

    /// Read back by the `tar` crate: names (the long one too), sizes and contents.
    #[test]
    fn the_archive_is_read_back_by_a_real_tar_reader() {
        let entries = entries();
        let bytes = archive(&entries);
        let plain: Vec<Entry> = entries.iter().map(|(e, _)| e.clone()).collect();
        let layout = layout(&plain);
        assert_eq!(layout.total, bytes.len() as u64);
        let mut reader = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for file in reader.entries().expect("entries") {
            let mut file = file.expect("entry");
            let name = file.path().expect("path").display().to_string();
            let mut data = Vec::new();
            file.read_to_end(&mut data).expect("data");
            seen.push((name, data));
        }
        let expected: Vec<(String, Vec<u8>)> = entries
            .iter()
            .map(|(e, d)| (e.name.clone(), d.clone()))
            .collect();
        assert_eq!(seen, expected);
        // The offsets point at each entry's headers and data.
        for ((entry, data), (start, data_at)) in entries.iter().zip(&layout.offsets) {
            assert_eq!(
                &bytes[*start as usize..*data_at as usize],
                &headers(entry)[..]
            );
            assert_eq!(
                &bytes[*data_at as usize..*data_at as usize + data.len()],
                &data[..]
            );
        }
    }

    #[test]
    fn ranges_are_parsed_as_http_says() {
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=10-"), 100), Ok(Some((10, 99))));
        assert_eq!(parse_range(Some("bytes=10-19"), 100), Ok(Some((10, 19))));
        assert_eq!(parse_range(Some("bytes=90-500"), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some("bytes=-5"), 100), Ok(Some((95, 99))));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=x-"), 100), Err(()));
        assert_eq!(parse_range(Some("items=1-2"), 100), Ok(None));
    }

    #[test]
    fn the_etag_names_the_contents() {
        let plain: Vec<Entry> = entries().into_iter().map(|(e, _)| e).collect();
        assert_eq!(etag(&plain), etag(&plain.clone()));
        assert_ne!(etag(&plain), etag(&plain[1..]));
    }
}
