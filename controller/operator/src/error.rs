//! The operator's errors, each with a bounded category that metrics, Events and conditions
//! use as a label or reason.

use std::fmt;

/// What kind of failure, with few enough values to be a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// The object's spec cannot work as written; fixing it is the user's move.
    InvalidSpec,
    /// Something the object names does not exist or does not fit.
    Reference,
    /// A site's API server could not be reached.
    SiteUnreachable,
    /// The management cluster's API refused or failed a call.
    Kubernetes,
    /// The platform at a site failed an operation.
    Fabric,
    /// A bug or an impossible state.
    Internal,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::InvalidSpec => "InvalidSpec",
            Category::Reference => "Reference",
            Category::SiteUnreachable => "SiteUnreachable",
            Category::Kubernetes => "Kubernetes",
            Category::Fabric => "Fabric",
            Category::Internal => "Internal",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("site {site}: {message}")]
    Site { site: String, message: String },
    #[error("{0}")]
    InvalidSpec(String),
    #[error("{0}")]
    Reference(String),
    #[error("{0}")]
    Fabric(String),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn category(&self) -> Category {
        match self {
            Error::Kube { .. } => Category::Kubernetes,
            Error::Site { .. } => Category::SiteUnreachable,
            Error::InvalidSpec(_) => Category::InvalidSpec,
            Error::Reference(_) => Category::Reference,
            Error::Fabric(_) => Category::Fabric,
            Error::Internal(_) => Category::Internal,
        }
    }

    pub fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Kube { what, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
