//! Who is calling, and what they may do: the OAuth 2.0 scopes of a verified token (the `scope`
//! claim, space-separated) and its subject (`sub`). Verification lives in the binary; this is the
//! decision every route makes, shared by ingestion and serving so that both decide alike.
//!
//! | scope | allows |
//! |---|---|
//! | `health:write` | batch-upsert and sample deletions for `userId == sub`; the caller's own profile and erasure |
//! | `health:read` | per-user reads for `userId == sub`; SQL over the caller's rows only |
//! | `backend` | domain changes, batch-upsert and profiles for any user, erasure of any user |
//! | `analytics` | SQL and per-user reads over all users |
//! | `ops` | `/v1/frontiers` and `/metrics` |

/// One OAuth 2.0 scope vitalflow knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    HealthWrite,
    HealthRead,
    Backend,
    Analytics,
    Ops,
}

impl Scope {
    /// Every scope, in the order of the table above.
    pub const ALL: [Scope; 5] = [Scope::HealthWrite, Scope::HealthRead, Scope::Backend, Scope::Analytics, Scope::Ops];

    /// The scope's name in a token's `scope` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::HealthWrite => "health:write",
            Scope::HealthRead => "health:read",
            Scope::Backend => "backend",
            Scope::Analytics => "analytics",
            Scope::Ops => "ops",
        }
    }

    /// The scope named `s`; `None` for a name vitalflow does not know (such names are ignored).
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// The authenticated caller of one request. With `auth.mode = "none"` (loopback only) every
/// request is [`Caller::trusted`]; Kafka and outbox input are trusted as `backend`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`; `None` for the trusted caller.
    pub subject: Option<String>,
    scopes: [bool; 5],
}

/// What a caller may see of the per-user views in SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowVisibility {
    /// Every user's rows (`analytics`, `backend`, the trusted caller).
    All,
    /// Only this user's rows (`health:read`): a filter applied beneath the query.
    User(String),
}

impl Caller {
    /// Every scope, no subject: auth mode `none`, and input from Kafka and the outbox.
    pub fn trusted() -> Caller {
        Caller { subject: None, scopes: [true; 5] }
    }

    /// A verified token's caller: `sub` and the space-separated `scope` claim (unknown names are
    /// ignored).
    pub fn from_claims(subject: impl Into<String>, scope_claim: &str) -> Caller {
        let mut scopes = [false; 5];
        for s in scope_claim.split_ascii_whitespace().filter_map(Scope::parse) {
            scopes[s as usize] = true;
        }
        Caller { subject: Some(subject.into()), scopes }
    }

    /// Whether the caller holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes[scope as usize]
    }

    /// The caller's scopes, space-separated (for the audit log).
    pub fn scope_string(&self) -> String {
        Scope::ALL.into_iter().filter(|s| self.has(*s)).map(Scope::as_str).collect::<Vec<_>>().join(" ")
    }

    fn is_subject(&self, user_id: &str) -> bool {
        self.subject.as_deref() == Some(user_id)
    }

    /// May write samples (batch-upsert, deletions) and the profile of `user_id`.
    pub fn may_write_user(&self, user_id: &str) -> bool {
        self.has(Scope::Backend) || (self.has(Scope::HealthWrite) && self.is_subject(user_id))
    }

    /// May erase `user_id` (`DELETE /v1/users/{userId}`).
    pub fn may_erase_user(&self, user_id: &str) -> bool {
        self.may_write_user(user_id)
    }

    /// May send domain changes (sessions, products, users).
    pub fn may_write_domain(&self) -> bool {
        self.has(Scope::Backend)
    }

    /// May read `user_id`'s views.
    pub fn may_read_user(&self, user_id: &str) -> bool {
        self.has(Scope::Analytics) || (self.has(Scope::HealthRead) && self.is_subject(user_id))
    }

    /// What SQL may see; `None` when the caller may not run SQL at all.
    pub fn sql_visibility(&self) -> Option<RowVisibility> {
        if self.has(Scope::Analytics) {
            Some(RowVisibility::All)
        } else if self.has(Scope::HealthRead) {
            self.subject.clone().map(RowVisibility::User)
        } else {
            None
        }
    }

    /// May read `/v1/frontiers` and `/metrics`.
    pub fn may_operate(&self) -> bool {
        self.has(Scope::Ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_decide_per_user_access() {
        let user = Caller::from_claims("u1", "health:write health:read unknown:scope");
        assert!(user.may_write_user("u1") && !user.may_write_user("u2"));
        assert!(user.may_read_user("u1") && !user.may_read_user("u2"));
        assert!(!user.may_write_domain() && !user.may_operate());
        assert_eq!(user.sql_visibility(), Some(RowVisibility::User("u1".into())));
        assert_eq!(user.scope_string(), "health:write health:read");

        let analyst = Caller::from_claims("a", "analytics");
        assert!(analyst.may_read_user("u2") && !analyst.may_write_user("u2"));
        assert_eq!(analyst.sql_visibility(), Some(RowVisibility::All));

        let backend = Caller::from_claims("svc", "backend");
        assert!(backend.may_write_user("u9") && backend.may_erase_user("u9") && backend.may_write_domain());
        assert!(!backend.may_read_user("u9"));
        assert_eq!(backend.sql_visibility(), None);

        let ops = Caller::from_claims("o", "ops");
        assert!(ops.may_operate() && !ops.may_read_user("o"));
        let trusted = Caller::trusted();
        assert!(trusted.may_write_domain() && trusted.may_read_user("x"));
        assert_eq!(trusted.sql_visibility(), Some(RowVisibility::All));
    }
}
