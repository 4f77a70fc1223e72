//! The retained messages, in a trie on topic levels so that a subscription's filter walks only
//! the branches it matches: a wildcard subscription gets every retained match without a scan of
//! the whole store, and with no cap on how many.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::message::{Message, Shared};

/// Retained messages by topic.
#[derive(Default)]
pub(crate) struct Retained {
    root: Node,
    len: usize,
    bytes: usize,
}

/// One topic level.
#[derive(Default)]
struct Node {
    children: BTreeMap<Box<str>, Node>,
    msg: Option<Shared<Message>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        // A topic can have 32 768 levels: the derived drop would recurse that deep. Detach the
        // subtrees onto a heap stack instead, so every node dropped has no children left.
        if self.children.is_empty() {
            return;
        }
        let mut stack: Vec<Node> = Vec::new();
        stack.extend(core::mem::take(&mut self.children).into_values());
        while let Some(mut node) = stack.pop() {
            stack.extend(core::mem::take(&mut node.children).into_values());
        }
    }
}

/// Splits off the first level of the rest of a topic or filter.
fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, after)) => (level, Some(after)),
        None => (rest, None),
    }
}

impl Retained {
    /// Number of retained messages.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes they hold (as [`Message::size`] counts them).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Retains `msg` for its topic, returning the message it replaces.
    pub(crate) fn set(&mut self, msg: Shared<Message>) -> Option<Shared<Message>> {
        let mut node = &mut self.root;
        for level in msg.topic.split('/') {
            node = node.children.entry(Box::from(level)).or_default();
        }
        self.bytes += msg.size();
        let old = node.msg.replace(msg);
        match &old {
            Some(old) => self.bytes = self.bytes.saturating_sub(old.size()),
            None => self.len += 1,
        }
        old
    }

    /// The message retained for exactly `topic`.
    pub(crate) fn get(&self, topic: &str) -> Option<&Shared<Message>> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.msg.as_ref()
    }

    /// Removes the message retained for `topic`, pruning the levels left empty.
    pub(crate) fn clear(&mut self, topic: &str) -> Option<Shared<Message>> {
        // First pass: the deepest node on the path that keeps a reason to exist; the branch
        // below it goes if the target ends up empty. Walking twice avoids recursion.
        let mut node = &self.root;
        let mut keep = 0;
        let mut depth = 0;
        for level in topic.split('/') {
            if depth == 0 || node.msg.is_some() || node.children.len() > 1 {
                keep = depth;
            }
            node = node.children.get(level)?;
            depth += 1;
        }
        node.msg.as_ref()?;
        let prune = node.children.is_empty();
        let mut levels = topic.split('/');
        let mut node = &mut self.root;
        let steps = if prune { keep } else { depth };
        for level in levels.by_ref().take(steps) {
            node = node.children.get_mut(level)?;
        }
        let old = if prune {
            let level = levels.next()?;
            let mut branch = node.children.remove(level)?;
            // The removed branch is a single path down to the target.
            let mut cur = &mut branch;
            for level in levels {
                cur = cur.children.get_mut(level)?;
            }
            cur.msg.take()
        } else {
            node.msg.take()
        };
        if let Some(old) = &old {
            self.len = self.len.saturating_sub(1);
            self.bytes = self.bytes.saturating_sub(old.size());
        }
        old
    }

    /// Calls `f` with every retained message whose topic matches `filter` (no `$share/`).
    pub(crate) fn for_each_match(&self, filter: &str, mut f: impl FnMut(&Shared<Message>)) {
        // (node, what is left of the filter below it, whether it is the root)
        let mut stack: Vec<(&Node, Option<&str>, bool)> = Vec::new();
        stack.push((&self.root, Some(filter), true));
        while let Some((node, rest, at_root)) = stack.pop() {
            let Some(rest) = rest else {
                if let Some(m) = &node.msg {
                    f(m);
                }
                continue;
            };
            let (level, after) = split_level(rest);
            match level {
                "#" => {
                    // "a/#" matches "a" itself and everything below it.
                    if let Some(m) = &node.msg {
                        f(m);
                    }
                    let mut sub: Vec<&Node> = node
                        .children
                        .iter()
                        .filter(|(k, _)| !(at_root && k.starts_with('$')))
                        .map(|(_, n)| n)
                        .collect();
                    while let Some(n) = sub.pop() {
                        if let Some(m) = &n.msg {
                            f(m);
                        }
                        sub.extend(n.children.values());
                    }
                }
                "+" => {
                    for (k, child) in &node.children {
                        // Topics starting with '$' are not matched by a leading wildcard.
                        if !(at_root && k.starts_with('$')) {
                            stack.push((child, after, false));
                        }
                    }
                }
                literal => {
                    if let Some(child) = node.children.get(literal) {
                        stack.push((child, after, false));
                    }
                }
            }
        }
    }

    /// Every retained message, in topic order of levels.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Shared<Message>)) {
        let mut stack: Vec<&Node> = Vec::new();
        stack.push(&self.root);
        while let Some(n) = stack.pop() {
            if let Some(m) = &n.msg {
                f(m);
            }
            stack.extend(n.children.values().rev());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::{String, ToString};
    use mqtt_proto::QoS;

    fn msg(topic: &str) -> Shared<Message> {
        Shared::new(Message {
            id: 0,
            topic: Box::from(topic),
            payload: Box::from(&b"x"[..]),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            expires_at: None,
        })
    }

    fn matching(r: &Retained, filter: &str) -> Vec<String> {
        let mut v = Vec::new();
        r.for_each_match(filter, |m| v.push(m.topic.to_string()));
        v.sort();
        v
    }

    #[test]
    fn matches_like_the_spec() {
        let mut r = Retained::default();
        for t in ["a", "a/b", "a/b/c", "a/x/c", "$SYS/up", "/lead", "b//c"] {
            r.set(msg(t));
        }
        assert_eq!(matching(&r, "a/#"), ["a", "a/b", "a/b/c", "a/x/c"]);
        assert_eq!(matching(&r, "a/+/c"), ["a/b/c", "a/x/c"]);
        assert_eq!(
            matching(&r, "#"),
            ["/lead", "a", "a/b", "a/b/c", "a/x/c", "b//c"]
        );
        assert_eq!(matching(&r, "+/up"), Vec::<String>::new());
        assert_eq!(matching(&r, "$SYS/#"), ["$SYS/up"]);
        assert_eq!(matching(&r, "+/lead"), ["/lead"]);
        assert_eq!(matching(&r, "b/+/c"), ["b//c"]);
        assert_eq!(r.len(), 7);
    }

    #[test]
    fn clear_prunes_and_keeps_neighbours() {
        let mut r = Retained::default();
        r.set(msg("a/b/c"));
        r.set(msg("a"));
        assert!(r.clear("a/b/c").is_some());
        assert!(r.clear("a/b/c").is_none());
        assert!(r.get("a").is_some());
        assert!(
            r.root
                .children
                .get("a")
                .is_some_and(|n| n.children.is_empty())
        );
        assert!(r.clear("a").is_some());
        assert!(r.root.children.is_empty());
        assert_eq!((r.len(), r.bytes()), (0, 0));
    }

    #[test]
    fn a_deep_topic_drops_without_recursion() {
        let mut r = Retained::default();
        let deep = "a/".repeat(40_000) + "z";
        r.set(msg(&deep));
        assert_eq!(matching(&r, "#").len(), 1);
        drop(r);
    }
}
