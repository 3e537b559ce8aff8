//! Salesforce-style 18-character identifiers: `OrganizationId`, `ActionId` and notification `Id`.
//!
//! Pure Rust. An id is a 3-character key prefix, a number in base 62 padded to 12 characters, and
//! Salesforce's 3-character case-safety checksum, so listeners that validate ids accept ours.
//! Ids are derived from stable numbers (the cluster's system identifier, a definition's key, a
//! queue row's key), so a notification keeps its id on every retry.

/// Key prefix of organizations.
pub const ORGANIZATION_PREFIX: &str = "00D";
/// Key prefix of outbound message definitions (workflow outbound messages).
pub const ACTION_PREFIX: &str = "04k";
/// Key prefix of outbound message notifications.
pub const NOTIFICATION_PREFIX: &str = "04l";

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const CHECKSUM: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// The 18-character id of `number` under a 3-character `prefix`. Every `u64` fits: 62^12 > 2^64.
pub fn salesforce_id(prefix: &str, number: u64) -> String {
    debug_assert_eq!(prefix.len(), 3);
    let mut digits = [b'0'; 12];
    let mut rest = number;
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(rest % 62) as usize];
        rest /= 62;
    }
    let mut id = String::with_capacity(18);
    id.push_str(prefix);
    id.extend(digits.iter().map(|&d| d as char));
    let suffix = checksum(id.as_bytes());
    id.extend(suffix.iter().map(|&c| c as char));
    id
}

/// The number behind an 18-character id of `prefix`, or `None` when `id` is not one (wrong
/// length, prefix, digit or checksum).
pub fn number_of(prefix: &str, id: &str) -> Option<u64> {
    let bytes = id.as_bytes();
    if bytes.len() != 18 || !id.starts_with(prefix) || checksum(&bytes[..15]) != bytes[15..] {
        return None;
    }
    bytes[3..15].iter().try_fold(0u64, |number, &digit| {
        let value = BASE62.iter().position(|&d| d == digit)? as u64;
        number.checked_mul(62)?.checked_add(value)
    })
}

/// Salesforce's case-safety suffix of a 15-character id: one character per 5-character chunk,
/// whose bits mark the chunk's upper-case letters.
fn checksum(id15: &[u8]) -> [u8; 3] {
    let mut suffix = [0u8; 3];
    for (chunk, out) in id15.chunks(5).zip(suffix.iter_mut()) {
        let bits = chunk
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_ascii_uppercase())
            .fold(0usize, |acc, (i, _)| acc | (1 << i));
        *out = CHECKSUM[bits];
    }
    suffix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_18_alphanumeric_characters() {
        for n in [0, 1, 61, 62, u64::from(u32::MAX), u64::MAX] {
            let id = salesforce_id(NOTIFICATION_PREFIX, n);
            assert_eq!(id.len(), 18, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
            assert!(id.starts_with("04l"));
        }
    }

    #[test]
    fn ids_are_distinct_and_stable() {
        assert_ne!(
            salesforce_id(ACTION_PREFIX, 1),
            salesforce_id(ACTION_PREFIX, 2)
        );
        assert_ne!(
            salesforce_id(ACTION_PREFIX, 10),
            salesforce_id(ACTION_PREFIX, 36)
        );
        assert_eq!(
            salesforce_id(ACTION_PREFIX, 7),
            salesforce_id(ACTION_PREFIX, 7)
        );
    }

    #[test]
    fn ids_decode_back_to_their_number() {
        for n in [0, 1, 61, 62, 123_456_789, u64::MAX] {
            assert_eq!(
                number_of(NOTIFICATION_PREFIX, &salesforce_id(NOTIFICATION_PREFIX, n)),
                Some(n)
            );
        }
        let id = salesforce_id(NOTIFICATION_PREFIX, 42);
        assert_eq!(number_of(ACTION_PREFIX, &id), None, "wrong prefix");
        assert_eq!(number_of(NOTIFICATION_PREFIX, &id[..17]), None, "too short");
        let mut tampered = id.clone().into_bytes();
        tampered[14] = b'Z';
        assert_eq!(
            number_of(NOTIFICATION_PREFIX, std::str::from_utf8(&tampered).unwrap()),
            None
        );
        assert_eq!(number_of(NOTIFICATION_PREFIX, "04l00000000000!AAA"), None);
    }

    #[test]
    fn checksum_matches_salesforce_algorithm() {
        // A published example: 15-character 001A0000006Vm9r has the 18-character form
        // 001A0000006Vm9rIAC.
        assert_eq!(&checksum(b"001A0000006Vm9r"), b"IAC");
        assert_eq!(&checksum(b"000000000000000"), b"AAA");
    }
}
