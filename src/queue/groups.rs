//! Groups of rendered notifications on their way into the queue: what capture hands to
//! the queue's insert, one queue row per group.

/// Notifications a queue row holds at most, and the factor of notification numbers.
pub const GROUP_LIMIT: i64 = 100;

/// Groups of notifications to write, in the order their first notification came: each a
/// message and its notifications' record ids and payloads. Their text sits in one buffer, not
/// in two allocations a notification.
pub struct Groups {
    text: String,
    groups: Vec<Group>,
    /// Most notifications in a group.
    pub(super) size: usize,
}

/// One group: a message, and where its notifications' texts sit in the groups' buffer.
struct Group {
    message_id: i64,
    notifications: Vec<TextAt>,
    /// Bytes of its record ids and payloads.
    bytes: usize,
}

/// Most bytes of record ids and payloads in one group, and in one batch sent together, unless a
/// single notification is larger (it then goes alone): far below the 1 GB PostgreSQL stores in
/// one value, and a SOAP message a listener can take.
pub const GROUP_BYTES: usize = 16 << 20;

/// Where a notification's record id and then its payload sit in a text buffer, one after the
/// other.
#[derive(Clone, Copy)]
pub struct TextAt {
    pub start: usize,
    pub payload_start: usize,
    pub end: usize,
}

impl TextAt {
    pub fn record_id(self, text: &str) -> &str {
        &text[self.start..self.payload_start]
    }

    pub fn payload(self, text: &str) -> &str {
        &text[self.payload_start..self.end]
    }
}

impl Groups {
    /// Groups of at most `size` notifications (capped at [`GROUP_LIMIT`]).
    pub fn new(size: usize) -> Groups {
        Groups {
            text: String::new(),
            groups: Vec::new(),
            size: size.clamp(1, GROUP_LIMIT as usize),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// How many groups (queue rows) there are.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Makes room for `bytes` more of record ids and payloads.
    pub fn reserve(&mut self, bytes: usize) {
        self.text.reserve(bytes);
    }

    /// Groups of at most `size` notifications whose record ids and payloads are in `text`
    /// already, added with [`Groups::push_written`]: no copy of them.
    pub fn over(size: usize, text: String) -> Groups {
        Groups {
            text,
            ..Groups::new(size)
        }
    }

    /// The text buffer, for its memory to be used again.
    pub fn into_text(self) -> String {
        self.text
    }

    /// Adds a notification of `message_id` to that message's open group, or a new one.
    pub fn push(&mut self, message_id: i64, record_id: &str, payload: &str) {
        let start = self.text.len();
        self.text.push_str(record_id);
        let payload_start = self.text.len();
        self.text.push_str(payload);
        let end = self.text.len();
        self.push_written(
            message_id,
            TextAt {
                start,
                payload_start,
                end,
            },
        );
    }

    /// Adds a notification of `message_id` whose texts are `at` in the text.
    pub fn push_written(&mut self, message_id: i64, at: TextAt) {
        // A message's open group is its latest one, among the last groups of as many messages
        // as are interleaved: found from the end in a step or two, without a map to build.
        let open = self.groups.iter().rposition(|g| g.message_id == message_id);
        let bytes = at.end - at.start;
        let index = match open {
            Some(index)
                if self.groups[index].notifications.len() < self.size
                    && self.groups[index].bytes + bytes <= GROUP_BYTES =>
            {
                index
            }
            _ => {
                // Grown as filled: most statements change one row.
                self.groups.push(Group {
                    message_id,
                    notifications: Vec::new(),
                    bytes: 0,
                });
                self.groups.len() - 1
            }
        };
        self.groups[index].notifications.push(at);
        self.groups[index].bytes += bytes;
    }

    /// Each group, with its notifications' record ids and payloads.
    pub fn iter(&self) -> impl Iterator<Item = GroupTexts<'_>> {
        self.groups.iter().map(|group| GroupTexts {
            group,
            text: &self.text,
        })
    }
}

/// A group and the text its notifications are in.
#[derive(Clone, Copy)]
pub struct GroupTexts<'a> {
    group: &'a Group,
    text: &'a str,
}

impl<'a> GroupTexts<'a> {
    pub fn message_id(&self) -> i64 {
        self.group.message_id
    }

    /// How many notifications it holds.
    pub fn len(&self) -> usize {
        self.group.notifications.len()
    }

    pub fn record_ids(&self) -> impl Iterator<Item = &'a str> + Clone + use<'a> {
        self.each(TextAt::record_id)
    }

    pub fn payloads(&self) -> impl Iterator<Item = &'a str> + Clone + use<'a> {
        self.each(TextAt::payload)
    }

    /// `part` of each notification's text.
    fn each(
        &self,
        part: fn(TextAt, &'a str) -> &'a str,
    ) -> impl Iterator<Item = &'a str> + Clone + use<'a> {
        let text = self.text;
        self.group
            .notifications
            .iter()
            .map(move |&at| part(at, text))
    }
}
