//! Tar entries with their full names, read without trusting the archive's sizes.
//!
//! The `tar` crate, when it merges GNU long-name and PAX headers into the entry that follows,
//! reads those headers' bodies whole, however big the archive says they are (a gzip of a few
//! MiB can claim gigabytes), and it expands GNU sparse entries into as many zeros as their
//! header claims. So entries are read raw, and [`Extended`] keeps what the extension headers
//! say, capped, for the entry they describe. Sparse entries are refused by the callers.

use std::io::Read;

use tar::EntryType;

/// An extension header's body: far above PATH_MAX, far below a memory problem.
pub const MAX_EXTENDED_HEADER: u64 = 64 << 10;

/// What the extension headers before an entry said about it.
#[derive(Default)]
pub struct Extended {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    uid: Option<u64>,
    gid: Option<u64>,
}

/// The names and owner of one entry, extension headers applied.
pub struct Names {
    pub path: Vec<u8>,
    pub link: Option<Vec<u8>>,
    pub uid: u64,
    pub gid: u64,
}

fn trim_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

impl Extended {
    /// Reads `entry` if it is an extension header (and returns true): its body is capped and
    /// kept for the next entry. A PAX `size` record is refused: honouring it or not would
    /// make this reader and others disagree on where entries start, and it only exists for
    /// files over 8 GiB, the unpack's cap.
    pub fn absorb<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<bool, String> {
        let kind = entry.header().entry_type();
        if !matches!(
            kind,
            EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader | EntryType::XGlobalHeader
        ) {
            return Ok(false);
        }
        let size = entry.header().entry_size().map_err(|e| e.to_string())?;
        if size > MAX_EXTENDED_HEADER {
            return Err(format!("a {kind:?} header of {size} bytes (more than {MAX_EXTENDED_HEADER})"));
        }
        let mut body = Vec::new();
        entry
            .take(MAX_EXTENDED_HEADER)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading a {kind:?} header: {e}"))?;
        match kind {
            EntryType::GNULongName => self.path = Some(trim_nul(body)),
            EntryType::GNULongLink => self.link = Some(trim_nul(body)),
            EntryType::XHeader => {
                for record in tar::PaxExtensions::new(&body) {
                    let record = record.map_err(|e| format!("a PAX header: {e}"))?;
                    let number = || -> Result<u64, String> {
                        record.value().ok().and_then(|v| v.parse().ok()).ok_or_else(|| {
                            format!("a PAX {} record that is not a number", String::from_utf8_lossy(record.key_bytes()))
                        })
                    };
                    match record.key_bytes() {
                        b"path" => self.path = Some(record.value_bytes().to_vec()),
                        b"linkpath" => self.link = Some(record.value_bytes().to_vec()),
                        b"uid" => self.uid = Some(number()?),
                        b"gid" => self.gid = Some(number()?),
                        b"size" => return Err("a PAX size record (files over 8 GiB are not unpacked)".into()),
                        _ => {} // mtime, atime, xattrs: not carried
                    }
                }
            }
            _ => {} // global headers: nothing in them is carried
        }
        Ok(true)
    }

    /// The names and owner of `entry` (not an extension header), using up what was kept.
    pub fn names<R: Read>(&mut self, entry: &tar::Entry<'_, R>) -> Result<Names, String> {
        let header = entry.header();
        let path = match self.path.take() {
            Some(p) => p,
            None => header.path_bytes().into_owned(),
        };
        let link = match self.link.take() {
            Some(l) => Some(l),
            None => header.link_name_bytes().map(|l| l.into_owned()),
        };
        let uid = match self.uid.take() {
            Some(u) => u,
            None => header.uid().map_err(|e| e.to_string())?,
        };
        let gid = match self.gid.take() {
            Some(g) => g,
            None => header.gid().map_err(|e| e.to_string())?,
        };
        Ok(Names { path, link, uid, gid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: EntryType, name: &str, body: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, body).unwrap();
        b.into_inner().unwrap()
    }

    fn names_of(tar: &[u8]) -> Result<Vec<(Vec<u8>, u64)>, String> {
        let mut archive = tar::Archive::new(tar);
        let mut ext = Extended::default();
        let mut out = Vec::new();
        for entry in archive.entries().unwrap().raw(true) {
            let mut entry = entry.map_err(|e| e.to_string())?;
            if ext.absorb(&mut entry)? {
                continue;
            }
            let n = ext.names(&entry)?;
            out.push((n.path, n.uid));
        }
        Ok(out)
    }

    #[test]
    fn long_names_and_pax_records_name_the_next_entry_only() {
        let long = "d/".repeat(100) + "f";
        let mut tar = raw(EntryType::GNULongName, "././@LongLink", format!("{long}\0").as_bytes());
        tar.truncate(tar.len() - 1024); // drop the end-of-archive blocks between the pieces
        let pax = b"30 path=pax/named/file/here/x\n13 uid=70000\n";
        let mut rest = raw(EntryType::Regular, "short", b"");
        rest.truncate(rest.len() - 1024);
        let mut x = raw(EntryType::XHeader, "PaxHeader", pax);
        x.truncate(x.len() - 1024);
        tar.extend(rest);
        tar.extend(x);
        tar.extend(raw(EntryType::Regular, "ignored", b""));
        // The long name goes to the first entry: "short" is replaced, as tar does.
        let names = names_of(&tar).unwrap();
        assert_eq!(names, vec![(long.into_bytes(), 0), (b"pax/named/file/here/x".to_vec(), 70000)]);
    }

    #[test]
    fn oversized_headers_and_pax_sizes_are_refused() {
        let tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
        h.set_entry_type(EntryType::XHeader);
        h.set_size(1 << 40); // claims a TiB; the body is not there
        h.set_cksum();
        drop(tar);
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend([0u8; 1024]);
        assert!(names_of(&bytes).unwrap_err().contains("more than 65536"));
        let sized = raw(EntryType::XHeader, "PaxHeader", b"16 size=1000000\n");
        assert!(names_of(&sized).unwrap_err().contains("PAX size record"));
    }
}
