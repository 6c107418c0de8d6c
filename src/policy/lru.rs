//! Exact least-recently-used order: one intrusive list, the head is the victim.

use super::list::{Links, List};
use crate::store::Token;

#[derive(Debug, Default)]
pub(crate) struct Lru {
    links: Links,
    order: List,
}

impl Lru {
    pub(crate) fn on_insert(&mut self, token: Token) {
        self.order.push_back(&mut self.links, token);
    }

    pub(crate) fn on_access(&mut self, token: Token) {
        if self.links.is_linked(token) {
            self.order.move_to_back(&mut self.links, token);
        }
    }

    pub(crate) fn on_remove(&mut self, token: Token) {
        self.order.unlink(&mut self.links, token);
    }

    pub(crate) fn victim(&self, keep: Token) -> Option<Token> {
        let head = self.order.head()?;
        if head != keep {
            return Some(head);
        }
        let next = self.links.next(head);
        (next != super::list::NIL).then_some(next)
    }

    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    /// Resident tokens, least recent first.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn order(&self) -> Vec<Token> {
        self.order.tokens(&self.links)
    }
}
