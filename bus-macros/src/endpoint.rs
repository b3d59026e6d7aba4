//! The `endpoint = ...` value both `#[command]` and `#[handler]` take: a string literal, or
//! the path of a `&'static str` constant, so that a team can keep its endpoint names in one
//! place (`endpoint = names::BILLING`).

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::parse::ParseStream;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, ExprPath, Lit, LitStr};

/// An endpoint name as written in an attribute.
pub(crate) enum EndpointName {
    /// `endpoint = "billing"`, checked non-empty here.
    Literal(LitStr),
    /// `endpoint = names::BILLING`, checked non-empty at compile time of the user's crate.
    Constant(ExprPath),
}

impl EndpointName {
    /// Parse the value after `endpoint =`.
    pub(crate) fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        match input.parse::<Expr>()? {
            Expr::Lit(ExprLit {
                lit: Lit::Str(lit), ..
            }) => {
                if lit.value().is_empty() {
                    return Err(syn::Error::new_spanned(
                        &lit,
                        "an endpoint name must be non-empty",
                    ));
                }
                Ok(EndpointName::Literal(lit))
            }
            Expr::Path(path) => Ok(EndpointName::Constant(path)),
            other => Err(syn::Error::new_spanned(
                other,
                "expected an endpoint name: a string literal (`\"billing\"`) or a `&'static str` constant (`names::BILLING`)",
            )),
        }
    }

    /// A compile-time check that a constant is not empty (nothing for a literal, which was
    /// checked when parsed).
    pub(crate) fn check(&self) -> TokenStream {
        match self {
            EndpointName::Literal(_) => TokenStream::new(),
            EndpointName::Constant(path) => quote_spanned! {path.span()=>
                const _: () = ::core::assert!(
                    !<str>::is_empty(#path),
                    "an endpoint name must be non-empty"
                );
            },
        }
    }
}

impl ToTokens for EndpointName {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        match self {
            EndpointName::Literal(lit) => lit.to_tokens(tokens),
            EndpointName::Constant(path) => tokens.extend(quote!(#path)),
        }
    }
}
