//! Which source line an instruction is on, from a code object's `co_linetable`, read
//! once per code object.

/// How a version encodes its line table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// 3.10 (PEP 626): pairs of an address delta in bytes and a signed line delta,
    /// -128 for no line.
    AddressLinePairs,
    /// 3.11 on (PEP 657): entries of a header byte (a code and a length in code units)
    /// and the code's line delta and columns.
    Locations,
}

/// A code object's line table, decoded once: the lines of its instructions, by range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineTable {
    /// Each range's end, in code units, and its line (0 for none), by ascending end.
    ranges: Vec<(u32, u32)>,
}

/// Bytes of a code unit: line tables count addresses in bytes.
const CODE_UNIT_BYTES: u64 = 2;

impl LineTable {
    /// The table `bytes` of a code object whose first line is `first_line`.
    pub fn new(encoding: Encoding, first_line: u32, bytes: &[u8]) -> Self {
        let mut ranges = Vec::new();
        let mut line = i64::from(first_line);
        let mut end = 0u64;
        let mut push = |end: u64, line: Option<i64>| {
            let line = line.and_then(|line| u32::try_from(line).ok()).unwrap_or(0);
            let end = u32::try_from(end / CODE_UNIT_BYTES).unwrap_or(u32::MAX);
            ranges.push((end, line));
        };
        match encoding {
            Encoding::AddressLinePairs => {
                for pair in bytes.as_chunks::<2>().0 {
                    end += u64::from(pair[0]);
                    let delta = pair[1] as i8;
                    let has_line = delta != -128;
                    if has_line {
                        line += i64::from(delta);
                    }
                    push(end, has_line.then_some(line));
                }
            }
            Encoding::Locations => {
                let mut at = 0;
                while let Some(&header) = bytes.get(at) {
                    let code = (header >> 3) & 15;
                    end += (u64::from(header & 7) + 1) * CODE_UNIT_BYTES;
                    line += match code {
                        13 | 14 => signed_varint(&bytes[at + 1..]),
                        10..=12 => i64::from(code - 10),
                        _ => 0,
                    };
                    push(end, (code != 15).then_some(line));
                    // The next entry is the next byte with its top bit set.
                    at += 1;
                    while bytes.get(at).is_some_and(|byte| byte & 0x80 == 0) {
                        at += 1;
                    }
                }
            }
        }
        LineTable { ranges }
    }

    /// The line of the instruction at index `instruction` (in code units), if it has
    /// one.
    pub fn line(&self, instruction: u32) -> Option<u32> {
        let range = self.ranges.partition_point(|&(end, _)| end <= instruction);
        self.ranges
            .get(range)
            .map(|&(_, line)| line)
            .filter(|&line| line != 0)
    }
}

/// A varint of 6-bit chunks, least significant first, bit 6 set on all but the last.
fn varint(bytes: &[u8]) -> u64 {
    let mut value = 0;
    for (index, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 63) << (6 * index);
        if byte & 64 == 0 {
            break;
        }
    }
    value
}

/// A [`varint`] whose lowest bit is the sign.
fn signed_varint(bytes: &[u8]) -> i64 {
    let value = varint(bytes);
    let magnitude = (value >> 1) as i64;
    if value & 1 == 1 {
        -magnitude
    } else {
        magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_line_pairs_give_each_range_its_line() {
        // Lines 10 (bytes 0..6), 12 (6..10), none (10..12), 11 (12..20).
        let table = LineTable::new(
            Encoding::AddressLinePairs,
            10,
            &[6, 0, 4, 2, 2, 0x80, 8, 0xff],
        );
        let lines: Vec<Option<u32>> = [0, 2, 3, 4, 5, 6, 9, 10].map(|i| table.line(i)).to_vec();
        assert_eq!(
            lines,
            [
                Some(10),
                Some(10),
                Some(12),
                Some(12),
                None,
                Some(11),
                Some(11),
                None
            ]
        );
    }

    #[test]
    fn locations_give_each_entry_its_line() {
        // A one-line entry (line +1, 2 units), a no-column entry (line +3 as a signed
        // varint: 6, 1 unit), a
        // short entry (same line, 1 unit), a no-location entry (1 unit), and a
        // long-form one (line -2, 1 unit).
        let table = LineTable::new(
            Encoding::Locations,
            20,
            &[
                0x80 | (11 << 3) | 1,
                0,
                4,
                0x80 | (13 << 3),
                6,
                0x80 | (5 << 3),
                0x10,
                0x80 | (15 << 3),
                0x80 | (14 << 3),
                5,
                0,
                0,
                0,
            ],
        );
        let lines: Vec<Option<u32>> = (0..7).map(|i| table.line(i)).collect();
        assert_eq!(
            lines,
            [Some(21), Some(21), Some(24), Some(24), None, Some(22), None]
        );
        assert_eq!(signed_varint(&[0x47, 0x01]), -35);
    }
}
