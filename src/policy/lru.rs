//! Exact least-recently-used order: one intrusive list, the head is the victim.

use super::list::{List, NIL};
use super::Entries;
use crate::store::Token;

/// The list's links live in the entries' slots.
#[derive(Debug, Default)]
pub(crate) struct Lru {
    order: List,
}

impl Lru {
    pub(crate) fn on_insert(&mut self, token: Token, entries: &impl Entries) {
        self.order.push_back(&mut { entries }, token);
    }

    pub(crate) fn on_access(&mut self, token: Token, entries: &impl Entries) {
        if entries.is_linked(token) {
            self.order.move_to_back(&mut { entries }, token);
        }
    }

    /// Forgets `token`, if it is on the list (an entry of weight 0 never
    /// is: the store keeps it out of the policy).
    pub(crate) fn on_remove(&mut self, token: Token, entries: &impl Entries) {
        if entries.is_linked(token) {
            self.order.unlink(&mut { entries }, token);
        }
    }

    pub(crate) fn victim(&self, keep: Token, entries: &impl Entries) -> Option<Token> {
        let head = self.order.head()?;
        if head != keep {
            return Some(head);
        }
        let (_, next) = entries.link(head);
        (next != NIL).then_some(next)
    }

    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    /// Resident tokens, least recent first.
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn order(&self, entries: &impl Entries) -> Vec<Token> {
        self.order.tokens(&entries)
    }
}
