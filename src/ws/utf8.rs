//! Incremental UTF-8 validation of text messages: bytes are checked as they arrive,
//! across frames and reads, so invalid text is refused before its frame is complete.
//!
//! Runs on: any thread (a connection's shard, inside its inbound decoder). Pure: no I/O,
//! no allocation; depends on nothing else in the crate.

/// The bytes fed to a [`Utf8Check`] are not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InvalidUtf8;

/// Incremental UTF-8 validation across frames and reads: remembers the incomplete
/// character at the end of what it has seen.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Utf8Check {
    tail: [u8; 4],
    tail_len: u8,
}

impl Utf8Check {
    /// Checks the next bytes of the text. `Err` as soon as they cannot be UTF-8.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InvalidUtf8> {
        if self.tail_len > 0 {
            let have = self.tail_len as usize;
            let width = match self.tail[0] {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => return Err(InvalidUtf8),
            };
            let take = (width - have).min(bytes.len());
            let mut buf = [0u8; 4];
            buf[..have].copy_from_slice(&self.tail[..have]);
            buf[have..have + take].copy_from_slice(&bytes[..take]);
            match std::str::from_utf8(&buf[..have + take]) {
                Ok(_) => {}
                Err(e) if e.error_len().is_none() => {
                    self.tail = buf;
                    self.tail_len = (have + take) as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
            bytes = &bytes[take..];
            self.tail_len = 0;
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let rest = &bytes[e.valid_up_to()..];
                self.tail[..rest.len()].copy_from_slice(rest);
                self.tail_len = rest.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// The text ended: `Err` when it ended inside a character. Resets the state.
    pub(crate) fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.tail_len == 0;
        *self = Utf8Check::default();
        if complete { Ok(()) } else { Err(InvalidUtf8) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_check_matches_std_on_every_split() {
        let samples: [&[u8]; 5] =
            [b"plain", "€uro ✓ 𝄞".as_bytes(), b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc3"];
        for s in samples {
            let valid = std::str::from_utf8(s).is_ok();
            for cut in 0..=s.len() {
                let mut c = Utf8Check::default();
                let ok =
                    c.feed(&s[..cut]).is_ok() && c.feed(&s[cut..]).is_ok() && c.finish().is_ok();
                assert_eq!(ok, valid, "{s:?} cut at {cut}");
            }
        }
    }
}
