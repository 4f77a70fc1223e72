//! Topic-filter routing: which handlers a received message goes to.
//!
//! A [`Router`] maps topic filters to handler keys, so a runtime can hand each incoming PUBLISH
//! to every handler whose filter matches its topic (what paho-style wrappers expose as
//! `AddHandler("sensors/+/temperature", f)`). Matching follows MQTT 5 section 4.7 exactly as
//! [`mqtt_proto::matches`] does.
//!
//! The filters live in a trie on topic levels, so a lookup costs about the depth of the topic
//! times the number of wildcard branches it meets, not the number of filters: a client with
//! 10 000 handlers stays fast. No operation recurses, so even a filter with thousands of levels
//! cannot overflow the stack (this crate runs on small embedded stacks).

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use mqtt_proto::TopicFilter;

/// Pending '+' branches kept on the stack before spilling to the heap: topics rarely meet more.
const INLINE_BRANCHES: usize = 8;

/// Routes topic names to the keys of every handler whose topic filter matches.
///
/// Each (filter, key) pair is held once. A shared subscription `$share/{group}/{filter}` routes
/// on its inner filter, since the broker delivers those messages with the real topic name; it
/// stays a pair of its own (distinct from the plain filter and from other groups), so
/// [`Router::filters`] gives back exactly what must be subscribed again.
pub struct Router<K> {
    root: Node<K>,
    len: usize,
}

/// One level of the trie: everything routed through the levels that lead here.
///
/// Not `Clone` or `Debug`: derived ones would recurse once per level, and a filter can have
/// tens of thousands of levels. [`Router`] implements both without recursion.
struct Node<K> {
    /// Literal next levels, sorted by level so lookups are a binary search.
    children: Vec<(Box<str>, Node<K>)>,
    /// The next level being `+`.
    plus: Option<Box<Node<K>>>,
    /// Filters that end with `#` after this node's levels (`#` alone at the root).
    hash: Vec<Entry<K>>,
    /// Filters that end exactly at this node.
    exact: Vec<Entry<K>>,
}

/// One (filter, key) pair, stored at the node its filter leads to.
struct Entry<K> {
    /// The share group of a `$share/{group}/…` filter: matching ignores it, but it is part of
    /// the pair's identity and of the filter that must be subscribed again.
    group: Option<Box<str>>,
    key: K,
}

impl<K: PartialEq> Entry<K> {
    /// Whether this entry is the pair (group, key).
    fn is(&self, group: Option<&str>, key: &K) -> bool {
        self.group.as_deref() == group && self.key == *key
    }
}

/// A filter reduced to what the trie needs: the levels to walk and which list to use.
#[derive(Debug, Clone, Copy)]
struct Route<'a> {
    /// The share group, if the filter was `$share/{group}/…`.
    group: Option<&'a str>,
    /// The levels before a final `#` (all levels if there is none); `None` for `#` alone.
    path: Option<&'a str>,
    /// Whether the filter ends with `#`.
    hash: bool,
}

impl<'a> Route<'a> {
    /// Splits a validated filter into its route.
    fn of(filter: TopicFilter<'a>) -> Self {
        let (group, inner) = match filter.shared() {
            Some(shared) => (Some(shared.group), shared.filter.as_str()),
            None => (None, filter.as_str()),
        };
        Route::of_parts(group, inner)
    }

    /// The route of an inner filter (no `$share/` prefix) with its share group.
    fn of_parts(group: Option<&'a str>, inner: &'a str) -> Self {
        // A valid filter has '#' only as its whole last level, so only the end needs a look.
        let (path, hash) = if inner == "#" {
            (None, true)
        } else if let Some(path) = inner.strip_suffix("/#") {
            (Some(path), true)
        } else {
            (Some(inner), false)
        };
        Route { group, path, hash }
    }

    /// The levels leading to the filter's node.
    fn levels(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.path.into_iter().flat_map(|path| path.split('/'))
    }
}

impl<K> Node<K> {
    /// A node with nothing routed through it.
    const fn new() -> Self {
        Node {
            children: Vec::new(),
            plus: None,
            hash: Vec::new(),
            exact: Vec::new(),
        }
    }

    /// The position of a literal child, or where it would be inserted.
    fn find(&self, level: &str) -> Result<usize, usize> {
        self.children
            .binary_search_by(|(l, _)| l.as_ref().cmp(level))
    }

    /// The literal child for a topic level.
    fn child(&self, level: &str) -> Option<&Node<K>> {
        let i = self.find(level).ok()?;
        self.children.get(i).map(|(_, node)| node)
    }

    /// The child for a filter level (`+` or a literal).
    fn step(&self, level: &str) -> Option<&Node<K>> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.child(level)
        }
    }

    /// The child for a filter level, mutably.
    fn step_mut(&mut self, level: &str) -> Option<&mut Node<K>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            let i = self.find(level).ok()?;
            self.children.get_mut(i).map(|(_, node)| node)
        }
    }

    /// The child for a filter level, created if missing (always `Some`).
    fn step_or_insert(&mut self, level: &str) -> Option<&mut Node<K>> {
        if level == "+" {
            return Some(self.plus.get_or_insert_with(|| Box::new(Node::new())));
        }
        let i = match self.find(level) {
            Ok(i) => i,
            Err(i) => {
                self.children.insert(i, (Box::from(level), Node::new()));
                i
            }
        };
        self.children.get_mut(i).map(|(_, node)| node)
    }

    /// Drops the child for a filter level with its whole subtree.
    fn remove_step(&mut self, level: &str) {
        if level == "+" {
            self.plus = None;
        } else if let Ok(i) = self.find(level) {
            self.children.remove(i);
        }
    }

    /// The entries of filters ending here with `#` (`hash`) or exactly here.
    fn list(&self, hash: bool) -> &Vec<Entry<K>> {
        if hash { &self.hash } else { &self.exact }
    }

    /// [`Node::list`], mutably.
    fn list_mut(&mut self, hash: bool) -> &mut Vec<Entry<K>> {
        if hash {
            &mut self.hash
        } else {
            &mut self.exact
        }
    }

    /// How many children (literal and `+`) the node has.
    fn branches(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some())
    }

    /// Whether the node holds no entries.
    fn has_entries(&self) -> bool {
        !self.hash.is_empty() || !self.exact.is_empty()
    }
}

impl<K> Drop for Node<K> {
    fn drop(&mut self) {
        // The derived drop would recurse once per level; a deep enough filter would overflow
        // the stack. Detach the subtrees onto a heap stack instead, so each node dropped has no
        // children left (and takes the early return).
        if self.branches() == 0 {
            return;
        }
        let mut stack: Vec<Node<K>> = Vec::new();
        fn detach<K>(node: &mut Node<K>, stack: &mut Vec<Node<K>>) {
            stack.extend(node.children.drain(..).map(|(_, child)| child));
            if let Some(plus) = node.plus.take() {
                stack.push(*plus);
            }
        }
        detach(self, &mut stack);
        while let Some(mut node) = stack.pop() {
            detach(&mut node, &mut stack);
        }
    }
}

/// A LIFO of '+' branches still to visit while matching: on the stack while small, so most
/// lookups never allocate.
struct Pending<'a, K> {
    inline: heapless::Vec<(&'a Node<K>, Option<&'a str>), INLINE_BRANCHES>,
    spill: Vec<(&'a Node<K>, Option<&'a str>)>,
}

impl<'a, K> Pending<'a, K> {
    /// An empty stack.
    const fn new() -> Self {
        Pending {
            inline: heapless::Vec::new(),
            spill: Vec::new(),
        }
    }

    /// Adds a branch to visit later.
    fn push(&mut self, branch: (&'a Node<K>, Option<&'a str>)) {
        // Once `inline` is full every later push goes to `spill`, and `pop` empties `spill`
        // first, so the order stays last-in first-out.
        if let Err(branch) = self.inline.push(branch) {
            self.spill.push(branch);
        }
    }

    /// The branch pushed last.
    fn pop(&mut self) -> Option<(&'a Node<K>, Option<&'a str>)> {
        self.spill.pop().or_else(|| self.inline.pop())
    }
}

/// Splits off the first level of a non-empty rest of a topic.
fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, after)) => (level, Some(after)),
        None => (rest, None),
    }
}

/// The full filter string of an entry at a node reached by `path` (`None` at the root).
fn filter_string(group: Option<&str>, path: Option<&str>, hash: bool) -> String {
    let mut s = String::new();
    if let Some(group) = group {
        s.push_str("$share/");
        s.push_str(group);
        s.push('/');
    }
    if let Some(path) = path {
        s.push_str(path);
        if hash {
            s.push('/');
        }
    }
    if hash {
        s.push('#');
    }
    s
}

impl<K> Router<K> {
    /// Visits every node with its path of levels (`None` for the root), depth first.
    fn walk<'s>(&'s self, mut visit: impl FnMut(Option<&str>, &'s Node<K>)) {
        // An explicit stack rather than recursion, as the trie is as deep as the longest
        // filter; one path buffer cut back to the parent's length rather than a string per
        // node, which would cost the square of the depth.
        let mut path = String::new();
        // (node, its level, its depth, the length of its parent's path)
        let mut stack: Vec<(&Node<K>, &str, usize, usize)> = Vec::new();
        stack.push((&self.root, "", 0, 0));
        while let Some((node, level, depth, parent_len)) = stack.pop() {
            // `parent_len` was once the length of `path`, so it is on a char boundary.
            path.truncate(parent_len);
            if depth > 1 {
                path.push('/');
            }
            path.push_str(level);
            visit((depth > 0).then_some(path.as_str()), node);
            // Pushed in reverse so the stack pops them in sorted order.
            let len = path.len();
            if let Some(plus) = node.plus.as_deref() {
                stack.push((plus, "+", depth + 1, len));
            }
            for (level, child) in node.children.iter().rev() {
                stack.push((child, level, depth + 1, len));
            }
        }
    }
}

impl<K: Clone + PartialEq> Router<K> {
    /// An empty router.
    #[must_use]
    pub const fn new() -> Self {
        Router {
            root: Node::new(),
            len: 0,
        }
    }

    /// Adds `key` for `filter`; returns false if that exact (filter, key) pair already existed.
    pub fn insert(&mut self, filter: TopicFilter<'_>, key: K) -> bool {
        self.insert_route(Route::of(filter), key)
    }

    /// Adds the pair (route, key) unless it is there already.
    fn insert_route(&mut self, route: Route<'_>, key: K) -> bool {
        let mut node = &mut self.root;
        for level in route.levels() {
            let Some(next) = node.step_or_insert(level) else {
                // Unreachable: the child was just found or inserted.
                return false;
            };
            node = next;
        }
        let list = node.list_mut(route.hash);
        if list.iter().any(|e| e.is(route.group, &key)) {
            return false;
        }
        list.push(Entry {
            group: route.group.map(Box::from),
            key,
        });
        self.len += 1;
        true
    }

    /// Removes `key` from `filter`; returns whether it was there. Prunes empty nodes.
    pub fn remove(&mut self, filter: TopicFilter<'_>, key: &K) -> bool {
        self.remove_route(Route::of(filter), key)
    }

    /// Removes the pair (route, key) and every node left empty by it.
    fn remove_route(&mut self, route: Route<'_>, key: &K) -> bool {
        // First pass, read-only: find the entry, and the deepest node on the path that keeps a
        // reason to exist (entries or another branch). If the entry is the last thing in its
        // node, the branch below that node is cut off whole; walking down again from the root
        // avoids both recursion and parent pointers.
        let mut node = &self.root;
        let mut depth = 0;
        let mut keep = 0;
        for level in route.levels() {
            if depth == 0 || node.has_entries() || node.branches() > 1 {
                keep = depth;
            }
            let Some(next) = node.step(level) else {
                return false;
            };
            node = next;
            depth += 1;
        }
        let Some(index) = node
            .list(route.hash)
            .iter()
            .position(|e| e.is(route.group, key))
        else {
            return false;
        };
        // The root stays even when empty.
        let prune = depth > 0 && node.branches() == 0 && node.hash.len() + node.exact.len() == 1;

        // Second pass: change the nodes the first pass found (nothing moved in between).
        let mut levels = route.levels();
        let mut node = &mut self.root;
        let steps = if prune { keep } else { depth };
        for level in levels.by_ref().take(steps) {
            let Some(next) = node.step_mut(level) else {
                return false;
            };
            node = next;
        }
        match levels.next() {
            Some(level) if prune => node.remove_step(level),
            _ => {
                let list = node.list_mut(route.hash);
                if index >= list.len() {
                    return false;
                }
                list.remove(index);
            }
        }
        self.len = self.len.saturating_sub(1);
        true
    }

    /// Removes every filter of `key`, returning how many were removed.
    pub fn remove_key(&mut self, key: &K) -> usize {
        // Collect the filters first: pruning needs mutable access along each path, which a
        // traversal of the trie cannot give while it runs.
        let mut found: Vec<(Option<Box<str>>, String)> = Vec::new();
        self.walk(|path, node| {
            for hash in [false, true] {
                for entry in node.list(hash).iter().filter(|e| e.key == *key) {
                    let inner = filter_string(None, path, hash);
                    found.push((entry.group.clone(), inner));
                }
            }
        });
        found
            .iter()
            .filter(|(group, inner)| {
                self.remove_route(Route::of_parts(group.as_deref(), inner), key)
            })
            .count()
    }

    /// Calls `f` with each key whose filter matches `topic` (once per (filter, key) pair).
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&K)) {
        // Section 4.7.2: a filter starting with a wildcard never matches a topic starting with
        // '$'; those are exactly the root's '#' entries and its '+' branch.
        let mut guard = topic.starts_with('$');
        let mut node = &self.root;
        // What is left of the topic below `node`; `None` once every level is consumed.
        let mut rest = Some(topic);
        let mut pending = Pending::new();
        loop {
            if !guard {
                // '#' matches any number of levels, none included ("a/#" matches "a").
                node.hash.iter().for_each(|e| f(&e.key));
            }
            let next = match rest {
                None => {
                    node.exact.iter().for_each(|e| f(&e.key));
                    None
                }
                Some(rest) => {
                    let (level, after) = split_level(rest);
                    let plus = if guard { None } else { node.plus.as_deref() };
                    match (node.child(level), plus) {
                        (Some(child), Some(plus)) => {
                            pending.push((plus, after));
                            Some((child, after))
                        }
                        (Some(next), None) | (None, Some(next)) => Some((next, after)),
                        (None, None) => None,
                    }
                }
            };
            guard = false;
            match next.or_else(|| pending.pop()) {
                Some((next, after)) => {
                    node = next;
                    rest = after;
                }
                None => return,
            }
        }
    }

    /// The keys whose filter matches `topic`, collected.
    #[must_use]
    pub fn matches(&self, topic: &str) -> Vec<K> {
        let mut keys = Vec::new();
        self.for_each_match(topic, |k| keys.push(k.clone()));
        keys
    }

    /// Number of (filter, key) pairs.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether no filter is routed.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Iterates over the distinct filters currently routed, `$share/` prefixes included.
    pub fn filters(&self) -> impl Iterator<Item = String> + '_ {
        let mut filters = Vec::new();
        self.walk(|path, node| {
            for hash in [false, true] {
                // Several keys (or groups) can share a filter: each filter string once.
                let mut groups: Vec<Option<&str>> =
                    node.list(hash).iter().map(|e| e.group.as_deref()).collect();
                groups.sort_unstable();
                groups.dedup();
                filters.extend(
                    groups
                        .into_iter()
                        .map(|group| filter_string(group, path, hash)),
                );
            }
        });
        filters.into_iter()
    }
}

impl<K: Clone + PartialEq> Clone for Router<K> {
    fn clone(&self) -> Self {
        // Rebuilt pair by pair: a derived clone would recurse once per level.
        let mut clone = Router::new();
        self.walk(|path, node| {
            for hash in [false, true] {
                for entry in node.list(hash) {
                    let inner = filter_string(None, path, hash);
                    let route = Route::of_parts(entry.group.as_deref(), &inner);
                    clone.insert_route(route, entry.key.clone());
                }
            }
        });
        clone
    }
}

impl<K: fmt::Debug> fmt::Debug for Router<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Shows the (filter, key) pairs; a derived impl would show the trie, recursively.
        let mut pairs = Vec::new();
        self.walk(|path, node| {
            for hash in [false, true] {
                for entry in node.list(hash) {
                    pairs.push((
                        filter_string(entry.group.as_deref(), path, hash),
                        &entry.key,
                    ));
                }
            }
        });
        f.debug_struct("Router")
            .field("len", &self.len)
            .field("pairs", &pairs)
            .finish()
    }
}

impl<K: Clone + PartialEq> Default for Router<K> {
    fn default() -> Self {
        Router::new()
    }
}

#[cfg(feature = "defmt")]
impl<K> defmt::Format for Router<K> {
    fn format(&self, f: defmt::Formatter<'_>) {
        // The filters themselves are heap strings, which defmt cannot print without `alloc`.
        defmt::write!(f, "Router {{ len: {=usize} }}", self.len);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::collections::BTreeSet;
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    use mqtt_proto::{TopicFilter, TopicName};
    use proptest::prelude::*;

    use super::*;

    fn filter(s: &str) -> TopicFilter<'_> {
        TopicFilter::new(s).unwrap()
    }

    /// The matches for `topic`, sorted, to compare as a multiset.
    fn sorted<K: Clone + PartialEq + Ord>(router: &Router<K>, topic: &str) -> Vec<K> {
        let mut keys = router.matches(topic);
        keys.sort();
        keys
    }

    fn router(pairs: &[(&str, u32)]) -> Router<u32> {
        let mut r = Router::new();
        for &(f, k) in pairs {
            assert!(r.insert(filter(f), k), "{f:?} {k}");
        }
        r
    }

    fn filters<K: Clone + PartialEq>(r: &Router<K>) -> Vec<String> {
        let mut all: Vec<String> = r.filters().collect();
        all.sort();
        all
    }

    /// Nodes in the trie, root included.
    fn node_count<K: Clone + PartialEq>(r: &Router<K>) -> usize {
        let mut n = 0;
        r.walk(|_, _| n += 1);
        n
    }

    #[test]
    fn multiple_handlers_for_one_topic() {
        let r = router(&[
            ("sensors/+/temperature", 1),
            ("sensors/+/temperature", 2),
            ("sensors/kitchen/temperature", 3),
            ("sensors/kitchen/humidity", 4),
        ]);
        assert_eq!(sorted(&r, "sensors/kitchen/temperature"), [1, 2, 3]);
        assert_eq!(sorted(&r, "sensors/hall/temperature"), [1, 2]);
        assert_eq!(sorted(&r, "sensors/kitchen/humidity"), [4]);
        assert_eq!(sorted(&r, "sensors/kitchen"), [0; 0]);
        let mut calls = 0;
        r.for_each_match("sensors/hall/temperature", |_| calls += 1);
        assert_eq!(calls, 2);
    }

    #[test]
    fn exact_and_wildcard_overlap() {
        let r = router(&[
            ("a/b", 1),
            ("a/+", 2),
            ("a/#", 3),
            ("+/b", 4),
            ("#", 5),
            ("a/b/#", 6),
            ("a/+/#", 7),
            ("+/+", 8),
            ("a", 9),
        ]);
        assert_eq!(sorted(&r, "a/b"), [1, 2, 3, 4, 5, 6, 7, 8]);
        // '#' includes its parent level; "a/+/#" needs the '+' level to exist.
        assert_eq!(sorted(&r, "a"), [3, 5, 9]);
        assert_eq!(sorted(&r, "a/c"), [2, 3, 5, 7, 8]);
        assert_eq!(sorted(&r, "a/b/c"), [3, 5, 6, 7]);
        assert_eq!(sorted(&r, "x/b"), [4, 5, 8]);
        assert_eq!(sorted(&r, "x"), [5]);
    }

    #[test]
    fn plus_matches_empty_levels() {
        let r = router(&[("a/+/c", 1), ("+/+", 2), ("/", 3), ("+", 4), ("/+", 5)]);
        assert_eq!(sorted(&r, "a//c"), [1]);
        assert_eq!(sorted(&r, "/"), [2, 3, 5]);
        assert_eq!(sorted(&r, "/finance"), [2, 5]);
        assert_eq!(sorted(&r, "a"), [4]);
        assert_eq!(sorted(&r, "a/"), [2]);
    }

    #[test]
    fn hash_at_root() {
        let r = router(&[("#", 1)]);
        for topic in ["a", "/", "a/b/c", "a//", "a/$b"] {
            assert_eq!(r.matches(topic), [1], "{topic:?}");
        }
        assert_eq!(r.matches("$SYS/broker/uptime"), [0; 0]);
        assert_eq!(r.matches("$"), [0; 0]);
        assert_eq!(r.filters().collect::<Vec<_>>(), ["#"]);
    }

    #[test]
    fn dollar_topics_excluded_from_root_wildcards() {
        let r = router(&[
            ("#", 1),
            ("+/monitor/Clients", 2),
            ("$SYS/#", 3),
            ("$SYS/monitor/+", 4),
            ("+", 5),
            ("+/#", 6),
            ("a/+", 7),
            ("a/#", 8),
        ]);
        assert_eq!(sorted(&r, "$SYS/monitor/Clients"), [3, 4]);
        assert_eq!(sorted(&r, "$SYS"), [3]);
        assert_eq!(sorted(&r, "x/monitor/Clients"), [1, 2, 6]);
        // Only the first level is special.
        assert_eq!(sorted(&r, "a/$b"), [1, 6, 7, 8]);
    }

    #[test]
    fn shared_subscriptions() {
        let mut r = router(&[
            ("$share/g/sensors/#", 1),
            ("sensors/#", 1),
            ("$share/h/sensors/#", 1),
            ("$share/g/sensors/+", 2),
        ]);
        assert_eq!(r.len(), 4);
        // Routed on the inner filter, once per (filter, key) pair.
        assert_eq!(sorted(&r, "sensors/x"), [1, 1, 1, 2]);
        assert_eq!(sorted(&r, "sensors"), [1, 1, 1]);
        // The broker sends the real topic name, never the $share form.
        assert_eq!(sorted(&r, "$share/g/sensors/x"), [0; 0]);
        assert_eq!(
            filters(&r),
            [
                "$share/g/sensors/#",
                "$share/g/sensors/+",
                "$share/h/sensors/#",
                "sensors/#"
            ]
        );
        assert!(!r.insert(filter("$share/g/sensors/#"), 1));
        assert!(r.remove(filter("$share/g/sensors/#"), &1));
        assert!(!r.remove(filter("$share/g/sensors/#"), &1));
        assert!(!r.remove(filter("$share/x/sensors/+"), &2));
        assert_eq!(sorted(&r, "sensors/x"), [1, 1, 2]);
        assert_eq!(r.remove_key(&1), 2);
        assert_eq!(filters(&r), ["$share/g/sensors/+"]);
        // A shared '#' keeps the '$' rule of its inner filter.
        let r = router(&[("$share/g/#", 1)]);
        assert_eq!(r.matches("x"), [1]);
        assert_eq!(r.matches("$SYS/x"), [0; 0]);
    }

    #[test]
    fn remove_prunes_empty_nodes() {
        let mut r = router(&[("a/b", 1)]);
        let base = node_count(&r);
        assert_eq!(base, 3);
        for (f, k) in [("a/b/c/d", 2), ("a/+/c/#", 3), ("x/y/z", 4), ("#", 5)] {
            assert!(r.insert(filter(f), k));
        }
        assert!(node_count(&r) > base);
        // Absent pairs: unknown path, right path with wrong key, exact vs '#' list.
        assert!(!r.remove(filter("a/b/c/d/e"), &2));
        assert!(!r.remove(filter("a/b/c/d"), &1));
        assert!(!r.remove(filter("a/b/#"), &1));
        assert!(!r.remove(filter("a/+/c"), &3));
        assert_eq!(r.len(), 5);

        assert!(r.remove(filter("a/b/c/d"), &2));
        assert!(r.remove(filter("x/y/z"), &4));
        assert!(r.remove(filter("a/+/c/#"), &3));
        assert_eq!(node_count(&r), base);
        assert!(r.remove(filter("#"), &5));
        assert_eq!(node_count(&r), base);
        assert_eq!(sorted(&r, "a/b"), [1]);
        assert!(r.remove(filter("a/b"), &1));
        assert_eq!(node_count(&r), 1);
        assert!(r.is_empty());
        assert_eq!(r.matches("a/b"), [0; 0]);
        assert_eq!(r.filters().count(), 0);
    }

    #[test]
    fn remove_keeps_nodes_still_in_use() {
        let mut r = router(&[("a", 1), ("a/b/c", 2), ("a/b/d", 3), ("a/b/#", 4)]);
        assert!(r.remove(filter("a/b/c"), &2));
        assert_eq!(sorted(&r, "a/b/d"), [3, 4]);
        assert!(r.remove(filter("a/b/#"), &4));
        assert_eq!(sorted(&r, "a/b/d"), [3]);
        assert!(r.remove(filter("a/b/d"), &3));
        // "a" itself still holds a filter; only "b" and below went.
        assert_eq!(node_count(&r), 2);
        assert_eq!(r.matches("a"), [1]);
    }

    #[test]
    fn remove_key_removes_every_filter_of_a_key() {
        let mut r = router(&[
            ("a/b", 1),
            ("a/+", 1),
            ("#", 1),
            ("$share/g/a/#", 1),
            ("a/b", 2),
            ("c", 2),
        ]);
        assert_eq!(r.remove_key(&1), 4);
        assert_eq!(r.len(), 2);
        assert_eq!(sorted(&r, "a/b"), [2]);
        assert_eq!(sorted(&r, "a/x"), [0; 0]);
        assert_eq!(filters(&r), ["a/b", "c"]);
        assert_eq!(r.remove_key(&1), 0);
        assert_eq!(r.remove_key(&2), 2);
        assert!(r.is_empty());
        assert_eq!(node_count(&r), 1);
    }

    #[test]
    fn duplicate_insert() {
        let mut r = Router::default();
        assert!(r.insert(filter("a/+"), "x"));
        assert!(!r.insert(filter("a/+"), "x"));
        assert_eq!(r.len(), 1);
        assert!(r.insert(filter("a/+"), "y"));
        assert!(r.insert(filter("a/#"), "x"));
        assert_eq!(r.len(), 3);
        let mut keys = r.matches("a/b");
        keys.sort_unstable();
        assert_eq!(keys, ["x", "x", "y"]);
        // Two keys on a filter still make one filter to subscribe to.
        assert_eq!(filters(&r), ["a/#", "a/+"]);
    }

    #[test]
    fn new_and_default_are_empty() {
        let r: Router<u8> = Router::new();
        assert!(r.is_empty());
        assert_eq!(r.len(), 0);
        assert_eq!(r.matches("a"), [0u8; 0]);
        assert!(Router::<u8>::default().is_empty());
        assert!(format!("{r:?}").starts_with("Router"));
    }

    #[test]
    fn clone_and_debug_show_the_pairs() {
        let r = router(&[("a/+", 1), ("$share/g/a/#", 2), ("#", 3), ("a/+", 4)]);
        let c = r.clone();
        assert_eq!(c.len(), 4);
        assert_eq!(filters(&c), filters(&r));
        assert_eq!(sorted(&c, "a/b"), [1, 2, 3, 4]);
        assert_eq!(
            format!("{r:?}"),
            r##"Router { len: 4, pairs: [("#", 3), ("$share/g/a/#", 2), ("a/+", 1), ("a/+", 4)] }"##
        );
    }

    #[test]
    fn many_wildcard_branches_spill_to_the_heap() {
        // Each level has a literal and a '+' branch, so matching keeps more pending branches
        // than the inline stack holds.
        let levels = 12;
        let mut r = Router::new();
        for bits in 0u32..(1 << levels) {
            let f: Vec<&str> = (0..levels)
                .map(|i| if bits & (1 << i) == 0 { "a" } else { "+" })
                .collect();
            assert!(r.insert(filter(&f.join("/")), bits));
        }
        let topic = ["a"; 12].join("/");
        assert_eq!(r.matches(&topic).len(), 1 << levels);
        assert_eq!(r.matches(&["b"; 12].join("/")), [(1 << levels) - 1]);
    }

    #[test]
    fn deep_filters_do_not_recurse() {
        // Deeper than any call stack would allow if matching, walking or pruning recursed.
        let deep = ["+"; 30_000].join("/");
        let topic = ["x"; 30_000].join("/");
        let mut r = Router::new();
        assert!(r.insert(filter(&deep), 1));
        assert!(r.insert(filter(&(deep.clone() + "/#")), 2));
        assert_eq!(sorted(&r, &topic), [1, 2]);
        assert_eq!(r.filters().count(), 2);
        let copy = r.clone();
        assert_eq!(sorted(&copy, &topic), [1, 2]);
        assert!(format!("{copy:?}").contains("/+/#"));
        drop(copy);
        assert!(r.remove(filter(&deep), &1));
        assert_eq!(r.remove_key(&2), 1);
        assert_eq!(node_count(&r), 1);
    }

    /// A small alphabet of levels so random filters and topics overlap a lot.
    const LEVELS: [&str; 5] = ["a", "b", "", "$s", "+"];

    /// A random filter: an optional share group, a few levels, maybe a final '#'.
    fn filter_strategy() -> impl Strategy<Value = String> {
        (
            prop::option::of(prop::sample::select(&["g", "h"][..])),
            prop::collection::vec(prop::sample::select(&LEVELS[..]), 0..4),
            any::<bool>(),
        )
            .prop_map(|(group, levels, hash)| {
                let mut f = levels.join("/");
                if hash || levels.is_empty() {
                    f = if levels.is_empty() {
                        "#".into()
                    } else {
                        f + "/#"
                    };
                }
                match group {
                    Some(g) => format!("$share/{g}/{f}"),
                    None => f,
                }
            })
            .prop_filter("valid filter", |f| TopicFilter::new(f).is_ok())
    }

    /// A random topic name over the filters' literal levels and one they never use.
    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(&["a", "b", "", "$s", "c"][..]), 1..5)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("valid name", |t| TopicName::new(t).is_ok())
    }

    /// The keys a linear scan with `mqtt_proto::matches` finds, sorted.
    fn linear(model: &[(String, u8)], topic: &str) -> Vec<u8> {
        let mut keys: Vec<u8> = model
            .iter()
            .filter(|(f, _)| {
                let f = filter(f);
                let inner = f.shared().map_or(f.as_str(), |s| s.filter.as_str());
                mqtt_proto::matches(inner, topic)
            })
            .map(|&(_, k)| k)
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Checks the router against the model on every topic, and its len and filters.
    fn check(
        r: &Router<u8>,
        model: &[(String, u8)],
        topics: &[String],
    ) -> Result<(), TestCaseError> {
        for topic in topics {
            prop_assert_eq!(sorted(r, topic), linear(model, topic), "topic {:?}", topic);
        }
        prop_assert_eq!(r.len(), model.len());
        let expected: BTreeSet<String> = model.iter().map(|(f, _)| f.clone()).collect();
        let got: Vec<String> = r.filters().collect();
        prop_assert_eq!(got.len(), expected.len(), "filters are distinct: {:?}", got);
        prop_assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
        Ok(())
    }

    /// A removal: a pair that is present, a random pair (usually absent), or every pair of a key.
    #[derive(Debug, Clone)]
    enum Removal {
        Present(prop::sample::Index),
        Pair(String, u8),
        Key(u8),
    }

    fn removal_strategy() -> impl Strategy<Value = Removal> {
        prop_oneof![
            4 => any::<prop::sample::Index>().prop_map(Removal::Present),
            2 => (filter_strategy(), 0u8..3).prop_map(|(f, k)| Removal::Pair(f, k)),
            1 => (0u8..3).prop_map(Removal::Key),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_equal_linear_scan(
            pairs in prop::collection::vec((filter_strategy(), 0u8..3), 0..40),
            topics in prop::collection::vec(topic_strategy(), 1..20),
            removals in prop::collection::vec(removal_strategy(), 0..30),
        ) {
            let mut r = Router::new();
            let mut model: Vec<(String, u8)> = Vec::new();
            for (f, k) in pairs {
                let fresh = !model.contains(&(f.clone(), k));
                prop_assert_eq!(r.insert(filter(&f), k), fresh, "insert {:?} {}", f, k);
                if fresh {
                    model.push((f, k));
                }
            }
            check(&r, &model, &topics)?;

            for removal in removals {
                match removal {
                    Removal::Present(i) if !model.is_empty() => {
                        let (f, k) = model.remove(i.index(model.len()));
                        prop_assert!(r.remove(filter(&f), &k), "remove {:?} {}", f, k);
                    }
                    Removal::Present(_) => {}
                    Removal::Pair(f, k) => {
                        let present = model.iter().position(|p| *p == (f.clone(), k));
                        prop_assert_eq!(r.remove(filter(&f), &k), present.is_some());
                        if let Some(i) = present {
                            model.remove(i);
                        }
                    }
                    Removal::Key(k) => {
                        let before = model.len();
                        model.retain(|&(_, key)| key != k);
                        prop_assert_eq!(r.remove_key(&k), before - model.len());
                    }
                }
                check(&r, &model, &topics)?;
            }

            // Removing everything left must prune the trie back to its root.
            for (f, k) in model.clone() {
                prop_assert!(r.remove(filter(&f), &k));
            }
            prop_assert!(r.is_empty());
            prop_assert_eq!(node_count(&r), 1);
            prop_assert_eq!(r.filters().count(), 0);
        }
    }
}
