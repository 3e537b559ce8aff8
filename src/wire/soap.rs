//! The SOAP 1.1 wire format of outbound messages (SPEC §3): the envelope writer and the parser of
//! the listener's answer.
//!
//! Pure Rust, no pgrx. A notification's sObject fields are rendered once, at capture time
//! ([`render_fields`]), and stored ready to send; the worker only wraps stored fragments in an
//! envelope ([`write_envelope`]). Everything written here is escaped by [`push_escaped`], so a
//! stored fragment is always well-formed XML.

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

/// Namespace of `notifications`, `notificationsResponse` and `Ack`.
pub const OUTBOUND_NS: &str = "http://soap.sforce.com/2005/09/outbound";
/// Namespace of the SOAP 1.1 envelope.
pub const ENVELOPE_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";

/// The header values shared by every notification of one SOAP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub organization_id: &'a str,
    pub action_id: &'a str,
    pub enterprise_url: &'a str,
    pub partner_url: &'a str,
}

/// One notification as stored in the queue: its 18-character id and its rendered fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification<'a> {
    pub id: &'a str,
    pub fields_xml: &'a str,
}

/// Renders the fields of one sObject: `sf:Id` first, then every non-NULL field in the given
/// order. NULL values are left out, as Salesforce omits empty fields.
///
/// Field names must be valid XML names (checked when a message is defined); values are text in
/// their wire form and are escaped here. (Capture builds the same with [`Fields`] directly.)
#[cfg(test)]
pub fn render_fields<'v>(
    id: &str,
    fields: impl IntoIterator<Item = (&'v str, Option<&'v str>)>,
) -> String {
    let mut text = id.to_string();
    let mut out = Fields::new(&mut text, 0..id.len());
    for (name, value) in fields {
        if let Some(value) = value {
            out.add(&Tags::new(name), |text| {
                push_escaped(text, value);
                true
            });
        }
    }
    text.split_off(id.len())
}

/// Builds the sObject fields of one notification in place: `sf:Id` first, then each field
/// whose value its writer appends (escaped) to the text. Capture writes values straight into
/// the buffer of waiting notifications, without a string per value.
pub struct Fields<'a> {
    out: &'a mut String,
    /// Where the notification begins in `out`.
    start: usize,
}

/// Most bytes one notification's record Id and fields take once rendered: far below the 1 GB
/// PostgreSQL can store in one value, so a row any plain table takes is always captured.
pub const NOTIFICATION_BYTES: usize = 128 << 20;

/// What became of a field [`Fields::add`] was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Written,
    /// Its writer left it out (a value its XSD type cannot represent).
    LeftOut,
    /// Left out: with it the notification would pass [`NOTIFICATION_BYTES`].
    TooLarge,
}

impl<'a> Fields<'a> {
    /// Starts, at the end of `out`, the fields of a notification whose record Id is already
    /// in `out`, unescaped, at `id`.
    pub fn new(out: &'a mut String, id: std::ops::Range<usize>) -> Fields<'a> {
        let mut fields = Fields {
            start: id.start,
            out,
        };
        fields.add_element("     <sf:Id>", "</sf:Id>\n", |text| {
            if needs_escaping(&text[id.clone()]) {
                let unescaped = text[id].to_string();
                push_escaped(text, &unescaped);
            } else {
                text.extend_from_within(id);
            }
            true
        });
        fields
    }

    /// Adds the field whose element `tags` writes; `write` appends its escaped value, or
    /// returns false to leave the field out (a value its XSD type cannot represent). A field
    /// that would make the notification larger than [`NOTIFICATION_BYTES`] is left out too.
    pub fn add(&mut self, tags: &Tags, write: impl FnOnce(&mut String) -> bool) -> Added {
        self.add_element(&tags.open, &tags.close, write)
    }

    fn add_element(
        &mut self,
        open: &str,
        close: &str,
        write: impl FnOnce(&mut String) -> bool,
    ) -> Added {
        let start = self.out.len();
        self.out.push_str(open);
        if !write(self.out) {
            self.out.truncate(start);
            return Added::LeftOut;
        }
        self.out.push_str(close);
        if self.out.len() - self.start > NOTIFICATION_BYTES {
            self.out.truncate(start);
            return Added::TooLarge;
        }
        Added::Written
    }
}

/// The start and end tags of a field's element, with the layout around them: written once
/// per column, not pieced together per row.
pub struct Tags {
    open: String,
    close: String,
}

impl Tags {
    pub fn new(name: &str) -> Tags {
        Tags {
            open: format!("     <sf:{name}>"),
            close: format!("</sf:{name}>\n"),
        }
    }
}

/// Writes one complete SOAP message carrying `notifications` of one outbound message on a table
/// whose sObject type is `object_type`.
pub fn write_envelope(
    header: &Header,
    object_type: &str,
    notifications: &[Notification],
) -> String {
    let fields_len: usize = notifications.iter().map(|n| n.fields_xml.len() + 200).sum();
    let mut out = String::with_capacity(1024 + fields_len);
    out.push_str(concat!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
        "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"",
        " xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\"",
        " xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n",
        " <soapenv:Body>\n",
        "  <notifications xmlns=\"http://soap.sforce.com/2005/09/outbound\">\n",
    ));
    push_element(&mut out, "   ", "OrganizationId", header.organization_id);
    push_element(&mut out, "   ", "ActionId", header.action_id);
    out.push_str("   <SessionId xsi:nil=\"true\"/>\n");
    push_element(&mut out, "   ", "EnterpriseUrl", header.enterprise_url);
    push_element(&mut out, "   ", "PartnerUrl", header.partner_url);
    for notification in notifications {
        out.push_str("   <Notification>\n");
        push_element(&mut out, "    ", "Id", notification.id);
        out.push_str("    <sObject xsi:type=\"sf:");
        push_escaped(&mut out, object_type);
        out.push_str("\" xmlns:sf=\"urn:sobject.enterprise.soap.sforce.com\">\n");
        out.push_str(notification.fields_xml);
        out.push_str("    </sObject>\n   </Notification>\n");
    }
    out.push_str("  </notifications>\n </soapenv:Body>\n</soapenv:Envelope>\n");
    out
}

fn push_element(out: &mut String, indent: &str, name: &str, value: &str) {
    out.push_str(indent);
    out.push('<');
    out.push_str(name);
    out.push('>');
    push_escaped(out, value);
    out.push_str("</");
    out.push_str(name);
    out.push_str(">\n");
}

/// Appends `text` escaped for XML 1.0 character data and attribute values.
///
/// The five markup characters become entities; a carriage return becomes `&#13;` so that XML
/// line-end normalisation does not turn it into a line feed; characters XML 1.0 cannot carry at
/// all (most C0 controls, U+FFFE, U+FFFF) become U+FFFD, never raw bytes.
pub fn push_escaped(out: &mut String, text: &str) {
    let bytes = text.as_bytes();
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        let replaced = if MAY_NEED_ESCAPING[bytes[at] as usize] {
            escape_at(bytes, at)
        } else {
            None
        };
        let Some((replacement, length)) = replaced else {
            at += 1;
            continue;
        };
        out.push_str(&text[copied..at]);
        out.push_str(replacement);
        at += length;
        copied = at;
    }
    out.push_str(&text[copied..]);
}

/// The bytes [`escape_at`] may replace: a table, so the common byte costs one load.
static MAY_NEED_ESCAPING: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = byte != b'\t' as usize && byte != b'\n' as usize;
        byte += 1;
    }
    let mut special = 0;
    while special < 6 {
        table[b"&<>\"'\xEF"[special] as usize] = true;
        special += 1;
    }
    table
};

/// What replaces the text at byte `at` of `bytes` (UTF-8), and how many bytes it replaces;
/// `None` when the byte is written as it is.
///
/// Byte by byte: everything that needs escaping is ASCII but U+FFFE and U+FFFF (EF BF BE,
/// EF BF BF), and a scan by char decoded every character of every value a capture writes.
fn escape_at(bytes: &[u8], at: usize) -> Option<(&'static str, usize)> {
    Some(match bytes[at] {
        b'&' => ("&amp;", 1),
        b'<' => ("&lt;", 1),
        b'>' => ("&gt;", 1),
        b'"' => ("&quot;", 1),
        b'\'' => ("&apos;", 1),
        b'\r' => ("&#13;", 1),
        b'\t' | b'\n' => return None,
        0..=0x1F => ("\u{FFFD}", 1),
        0xEF if bytes.get(at + 1) == Some(&0xBF)
            && matches!(bytes.get(at + 2), Some(0xBE | 0xBF)) =>
        {
            ("\u{FFFD}", 3)
        }
        _ => return None,
    })
}

/// Whether [`push_escaped`] would change `text`.
fn needs_escaping(text: &str) -> bool {
    let bytes = text.as_bytes();
    (0..bytes.len())
        .any(|at| MAY_NEED_ESCAPING[bytes[at] as usize] && escape_at(bytes, at).is_some())
}

/// What a listener's HTTP body said about the notifications it was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `notificationsResponse/Ack` was true: every notification of the message is delivered.
    Ack,
    /// `Ack` was false.
    Nack,
    /// A SOAP Fault, with its faultstring.
    Fault(String),
    /// Anything else: not XML, not a SOAP envelope, or no `Ack`.
    Invalid(String),
}

impl Answer {
    /// The failure reason recorded on the queue, or `None` for an acknowledgement.
    pub fn failure_reason(&self) -> Option<String> {
        match self {
            Answer::Ack => None,
            Answer::Nack => Some("SOAP response was a nack".to_string()),
            Answer::Fault(text) if text.is_empty() => {
                Some("SOAP fault without a faultstring".into())
            }
            Answer::Fault(text) => Some(format!("SOAP fault: {text}")),
            Answer::Invalid(reason) => Some(reason.clone()),
        }
    }
}

/// What an element of the listener's answer is, by its place in the document: only
/// `Envelope/Body/notificationsResponse/Ack` can acknowledge.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Envelope,
    Body,
    Response,
    Ack,
    Fault,
    FaultString,
    Other,
}

impl Place {
    /// The place of an element named `local` in namespace `ns` whose parent is at `parent`
    /// (`None`: the root).
    fn of(parent: Option<Place>, ns: Option<&str>, local: &str) -> Place {
        let envelope_ns = ns == Some(ENVELOPE_NS);
        let outbound_ns = ns == Some(OUTBOUND_NS);
        match (parent, local) {
            (_, "Fault") if envelope_ns => Place::Fault,
            (None, "Envelope") if envelope_ns => Place::Envelope,
            (Some(Place::Envelope), "Body") if envelope_ns => Place::Body,
            (Some(Place::Body), "notificationsResponse") if outbound_ns => Place::Response,
            (Some(Place::Response), "Ack") if outbound_ns => Place::Ack,
            (Some(Place::Fault), "faultstring") if ns.is_none() => Place::FaultString,
            _ => Place::Other,
        }
    }
}

/// What the parser found in the answer.
#[derive(Default)]
struct Found {
    acks: usize,
    ack_text: String,
    ack_has_elements: bool,
    faults: usize,
    fault_text: Option<String>,
}

impl Found {
    fn text(&mut self, place: Option<Place>, text: &str) {
        match place {
            Some(Place::Ack) => self.ack_text.push_str(text),
            Some(Place::FaultString) => self
                .fault_text
                .get_or_insert_with(String::new)
                .push_str(text),
            _ => {}
        }
    }

    /// Records an element opening at `place` under `parent`.
    fn open(&mut self, parent: Option<Place>, place: Place) {
        match place {
            Place::Ack => self.acks += 1,
            Place::Fault => self.faults += 1,
            Place::FaultString => {
                self.fault_text.get_or_insert_with(String::new);
            }
            _ => {}
        }
        if parent == Some(Place::Ack) {
            self.ack_has_elements = true;
        }
    }

    fn answer(self) -> Answer {
        if self.faults > 0 {
            return Answer::Fault(self.fault_text.unwrap_or_default().trim().to_string());
        }
        if self.acks == 0 {
            return Answer::Invalid(
                "SOAP response has no Envelope/Body/notificationsResponse/Ack".to_string(),
            );
        }
        if self.acks > 1 {
            return Answer::Invalid("SOAP response has more than one Ack".to_string());
        }
        if self.ack_has_elements {
            return Answer::Invalid(
                "SOAP response's Ack holds elements, not a boolean".to_string(),
            );
        }
        match self.ack_text.trim() {
            "true" | "1" => Answer::Ack,
            "false" | "0" => Answer::Nack,
            other => Answer::Invalid(format!(
                "SOAP response has an invalid Ack value \"{other}\""
            )),
        }
    }
}

/// Parses a listener's response body. The whole document must be well-formed, with a SOAP 1.1
/// `Envelope` as its only root. Only an `Ack` at `Envelope/Body/notificationsResponse/Ack`
/// (outbound namespace, any prefix) counts, holding an `xsd:boolean` and nothing else; a SOAP
/// `Fault` anywhere makes the answer a failure, whatever else it holds.
pub fn parse_answer(body: &[u8]) -> Answer {
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(_) => return Answer::Invalid("response is not XML: not valid UTF-8".to_string()),
    };
    let mut reader = NsReader::from_str(text);
    let mut open: Vec<Place> = Vec::new();
    let mut saw_root = false;
    let mut found = Found::default();
    loop {
        let (ns, event) = match reader.read_resolved_event() {
            Ok((ns, event)) => (namespace_of(&ns), event),
            Err(err) => return Answer::Invalid(format!("response is not XML: {err}")),
        };
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                let parent = open.last().copied();
                if parent.is_none() {
                    if saw_root {
                        return Answer::Invalid(
                            "response is not XML: more than one root element".to_string(),
                        );
                    }
                    saw_root = true;
                }
                let place = Place::of(parent, ns.as_deref(), start.local_name().into_inner());
                if parent.is_none() && place != Place::Envelope {
                    return Answer::Invalid("response is not a SOAP envelope".to_string());
                }
                found.open(parent, place);
                if matches!(event, Event::Start(_)) {
                    open.push(place);
                }
            }
            Event::End(_) => {
                open.pop();
            }
            Event::Text(text) => found.text(open.last().copied(), &text),
            Event::CData(data) => {
                let decoded: &str = data.as_ref();
                found.text(open.last().copied(), decoded);
            }
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref() {
                    Ok(Some(c)) => Some(c),
                    _ => predefined_entity(&reference),
                };
                let Some(c) = resolved else {
                    return Answer::Invalid(format!(
                        "response is not XML: unknown entity &{};",
                        &*reference
                    ));
                };
                found.text(open.last().copied(), c.encode_utf8(&mut [0; 4]));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !open.is_empty() {
        return Answer::Invalid("response is not XML: unexpected end of document".to_string());
    }
    if !saw_root {
        return Answer::Invalid("response is not XML: empty document".to_string());
    }
    found.answer()
}

fn namespace_of(ns: &ResolveResult) -> Option<String> {
    match ns {
        ResolveResult::Bound(ns) => Some(ns.into_inner().to_string()),
        _ => None,
    }
}

fn predefined_entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Header = Header {
        organization_id: "00D000000000001AAA",
        action_id: "04k000000000001AAA",
        enterprise_url: "https://db.example/enterprise",
        partner_url: "https://db.example/partner",
    };

    #[test]
    fn envelope_has_the_exact_salesforce_shape() {
        let fields = render_fields("42", [("amount", Some("12.50")), ("note", Some("lunch"))]);
        let body = write_envelope(
            &HEADER,
            "expense",
            &[Notification {
                id: "04l000000000007AAA",
                fields_xml: &fields,
            }],
        );
        assert_eq!(body, include_str!("../../tests/golden/envelope_one.xml"));
    }

    #[test]
    fn several_notifications_share_one_header_in_order() {
        let a = render_fields("1", [("n", Some("a"))]);
        let b = render_fields("2", [("n", Some("b"))]);
        let body = write_envelope(
            &HEADER,
            "t",
            &[
                Notification {
                    id: "04l00000000000AAAA",
                    fields_xml: &a,
                },
                Notification {
                    id: "04l00000000000BAAA",
                    fields_xml: &b,
                },
            ],
        );
        assert_eq!(body.matches("<OrganizationId>").count(), 1);
        let first = body.find("04l00000000000AAAA").unwrap();
        let second = body.find("04l00000000000BAAA").unwrap();
        assert!(first < second);
        assert_eq!(body.matches("<Notification>").count(), 2);
    }

    #[test]
    fn header_elements_come_in_salesforce_order() {
        let body = write_envelope(&HEADER, "t", &[]);
        let order = [
            "<OrganizationId>",
            "<ActionId>",
            "<SessionId xsi:nil=\"true\"/>",
            "<EnterpriseUrl>",
            "<PartnerUrl>",
        ];
        let positions: Vec<usize> = order.iter().map(|tag| body.find(tag).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    }

    #[test]
    fn sf_id_comes_first_and_null_fields_are_left_out() {
        let fields = render_fields("7", [("a", Some("x")), ("b", None), ("c", Some(""))]);
        assert_eq!(
            fields,
            "     <sf:Id>7</sf:Id>\n     <sf:a>x</sf:a>\n     <sf:c></sf:c>\n"
        );
    }

    #[test]
    fn markup_characters_are_escaped() {
        let fields = render_fields("<1>", [("v", Some(r#"a<b>c&d"e'f"#))]);
        assert_eq!(
            fields,
            "     <sf:Id>&lt;1&gt;</sf:Id>\n     <sf:v>a&lt;b&gt;c&amp;d&quot;e&apos;f</sf:v>\n"
        );
    }

    #[test]
    fn non_ascii_text_is_kept_as_utf8() {
        let fields = render_fields("1", [("v", Some("Café ünïcödé 東京 🚀"))]);
        assert!(fields.contains("<sf:v>Café ünïcödé 東京 🚀</sf:v>"));
    }

    #[test]
    fn characters_xml_cannot_carry_are_never_emitted_raw() {
        let mut out = String::new();
        push_escaped(&mut out, "a\u{1}b\u{8}c\td\ne\rf\u{FFFF}g\u{B}");
        assert_eq!(out, "a\u{FFFD}b\u{FFFD}c\td\ne&#13;f\u{FFFD}g\u{FFFD}");
        let mut out = String::new();
        push_escaped(&mut out, "é<\u{FFFE}ü\u{FFFD}\u{EFBF}>");
        assert_eq!(out, "é&lt;\u{FFFD}ü\u{FFFD}\u{EFBF}&gt;");
    }

    #[test]
    fn written_envelope_is_well_formed_and_round_trips_values() {
        let nasty = "<&>\"' \r\n\t\u{2} end";
        let fields = render_fields("1", [("v", Some(nasty))]);
        let body = write_envelope(
            &HEADER,
            "t",
            &[Notification {
                id: "x",
                fields_xml: &fields,
            }],
        );
        let mut reader = NsReader::from_str(&body);
        let mut in_v = false;
        let mut value = String::new();
        loop {
            match reader.read_resolved_event().unwrap() {
                (_, Event::Start(s)) => in_v = s.local_name().into_inner() == "v",
                (_, Event::End(_)) => in_v = false,
                (_, Event::Text(t)) if in_v => value.push_str(&t.xml10_content()),
                (_, Event::GeneralRef(r)) if in_v => value.push(
                    r.resolve_char_ref()
                        .unwrap()
                        .or_else(|| predefined_entity(&r))
                        .unwrap(),
                ),
                (_, Event::Eof) => break,
                _ => {}
            }
        }
        assert_eq!(value, "<&>\"' \r\n\t\u{FFFD} end");
    }

    fn response(inner: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>{inner}</soapenv:Body></soapenv:Envelope>"#
        )
    }

    #[test]
    fn ack_true_is_an_acknowledgement() {
        let body = response(
            r#"<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse>"#,
        );
        assert_eq!(parse_answer(body.as_bytes()), Answer::Ack);
    }

    #[test]
    fn prefixed_response_is_an_acknowledgement() {
        let body = response(
            r#"<out:notificationsResponse xmlns:out="http://soap.sforce.com/2005/09/outbound"><out:Ack> true </out:Ack></out:notificationsResponse>"#,
        );
        assert_eq!(parse_answer(body.as_bytes()), Answer::Ack);
    }

    #[test]
    fn ack_false_is_a_nack() {
        let body = response(
            r#"<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>false</Ack></notificationsResponse>"#,
        );
        assert_eq!(parse_answer(body.as_bytes()), Answer::Nack);
        assert_eq!(
            Answer::Nack.failure_reason().unwrap(),
            "SOAP response was a nack"
        );
    }

    #[test]
    fn ack_in_the_wrong_namespace_does_not_count() {
        let body = response(r#"<notificationsResponse><Ack>true</Ack></notificationsResponse>"#);
        assert!(matches!(parse_answer(body.as_bytes()), Answer::Invalid(_)));
    }

    #[test]
    fn soap_fault_yields_its_faultstring() {
        let body = response(
            r#"<soapenv:Fault><faultcode>soapenv:Server</faultcode><faultstring>db &amp; disk full</faultstring></soapenv:Fault>"#,
        );
        let answer = parse_answer(body.as_bytes());
        assert_eq!(answer, Answer::Fault("db & disk full".to_string()));
        assert_eq!(
            answer.failure_reason().unwrap(),
            "SOAP fault: db & disk full"
        );
    }

    #[test]
    fn non_xml_is_invalid() {
        for body in ["<html><body>oops", "OK", "", "<a></b>"] {
            match parse_answer(body.as_bytes()) {
                Answer::Invalid(reason) => assert!(
                    reason.starts_with("response is not"),
                    "{body:?} gave {reason:?}"
                ),
                other => panic!("{body:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn xml_that_is_not_an_envelope_is_invalid() {
        let body = r#"<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse>"#;
        assert_eq!(
            parse_answer(body.as_bytes()),
            Answer::Invalid("response is not a SOAP envelope".to_string())
        );
    }

    #[test]
    fn truncated_ack_response_is_not_an_ack() {
        let body = response(
            r#"<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse>"#,
        );
        let cut = &body[..body.len() - 20];
        assert!(matches!(parse_answer(cut.as_bytes()), Answer::Invalid(_)));
    }

    #[test]
    fn a_field_that_would_make_a_notification_too_large_is_left_out() {
        let mut out = String::from("7");
        let mut fields = Fields::new(&mut out, 0..1);
        let big = "b".repeat(NOTIFICATION_BYTES);
        assert_eq!(
            fields.add(&Tags::new("big"), |out| {
                out.push_str(&big);
                true
            }),
            Added::TooLarge
        );
        assert_eq!(
            fields.add(&Tags::new("small"), |out| {
                out.push('s');
                true
            }),
            Added::Written
        );
        assert_eq!(out, "7     <sf:Id>7</sf:Id>\n     <sf:small>s</sf:small>\n");
    }

    #[test]
    fn a_table_name_is_escaped_in_the_sobject_type() {
        let notification = Notification {
            id: "04l000000000001AAA",
            fields_xml: "",
        };
        let envelope = write_envelope(&HEADER, "q\"/><x a=\"", &[notification]);
        assert!(envelope.contains(r#"xsi:type="sf:q&quot;/&gt;&lt;x a=&quot;""#));
    }

    #[test]
    fn an_ack_anywhere_but_envelope_body_response_does_not_count() {
        let ack = r#"<o:Ack xmlns:o="http://soap.sforce.com/2005/09/outbound">true</o:Ack>"#;
        let in_header = format!(
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Header><o:notificationsResponse xmlns:o="http://soap.sforce.com/2005/09/outbound">{ack}</o:notificationsResponse></soapenv:Header><soapenv:Body/></soapenv:Envelope>"#
        );
        let under_envelope = format!(
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">{ack}<soapenv:Body/></soapenv:Envelope>"#
        );
        let in_body = response(ack);
        let nested = response(&format!(
            r#"<x><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">{ack}</notificationsResponse></x>"#
        ));
        for body in [in_header, under_envelope, in_body, nested] {
            assert!(
                matches!(parse_answer(body.as_bytes()), Answer::Invalid(_)),
                "{body}"
            );
        }
    }

    #[test]
    fn a_fault_anywhere_is_a_failure_even_with_an_ack() {
        let ack = r#"<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse>"#;
        let fault_with_ack_in_detail = response(&format!(
            r#"<soapenv:Fault><faultcode>soapenv:Server</faultcode><detail>{ack}</detail></soapenv:Fault>"#
        ));
        assert_eq!(
            parse_answer(fault_with_ack_in_detail.as_bytes()),
            Answer::Fault(String::new())
        );
        assert_eq!(
            Answer::Fault(String::new()).failure_reason().unwrap(),
            "SOAP fault without a faultstring"
        );
        let fault_beside_ack = response(&format!(
            r#"{ack}<soapenv:Fault><faultstring>busy</faultstring></soapenv:Fault>"#
        ));
        assert_eq!(
            parse_answer(fault_beside_ack.as_bytes()),
            Answer::Fault("busy".to_string())
        );
    }

    #[test]
    fn an_ack_must_hold_one_boolean_and_come_once() {
        let wrapped = response(
            r#"<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack><x>true</x></Ack></notificationsResponse>"#,
        );
        let twice = response(
            r#"<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack><Ack>true</Ack></notificationsResponse>"#,
        );
        let empty = response(
            r#"<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack/></notificationsResponse>"#,
        );
        for body in [wrapped, twice, empty] {
            assert!(
                matches!(parse_answer(body.as_bytes()), Answer::Invalid(_)),
                "{body}"
            );
        }
    }
}
