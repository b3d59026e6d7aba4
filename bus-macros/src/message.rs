//! `#[derive(Command)]` and `#[derive(Event)]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{DeriveInput, LitStr};

use crate::endpoint::EndpointName;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Command,
    Event,
}

impl Kind {
    fn attr(self) -> &'static str {
        match self {
            Kind::Command => "command",
            Kind::Event => "event",
        }
    }
}

struct Parsed {
    input: DeriveInput,
    name: String,
    endpoint: Option<EndpointName>,
    response: Option<syn::Type>,
}

pub(crate) fn derive(input: TokenStream, kind: Kind) -> TokenStream {
    match parse(input, kind) {
        Ok(parsed) => expand(&parsed, kind),
        Err(e) => e.to_compile_error(),
    }
}

fn parse(input: TokenStream, kind: Kind) -> syn::Result<Parsed> {
    let input: DeriveInput = syn::parse2(input)?;
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "messages cannot be generic: a wire name must name one concrete type",
        ));
    }
    let mut name = None;
    let mut endpoint = None;
    let mut response = None;
    for attr in input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident(kind.attr()))
    {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                let lit: LitStr = meta.value()?.parse()?;
                let value = lit.value();
                if value.is_empty() || value.chars().any(char::is_whitespace) {
                    return Err(syn::Error::new_spanned(
                        &lit,
                        "a wire name must be non-empty and contain no whitespace",
                    ));
                }
                name = Some(value);
                Ok(())
            } else if meta.path.is_ident("endpoint") && kind == Kind::Command {
                endpoint = Some(EndpointName::parse(meta.value()?)?);
                Ok(())
            } else if meta.path.is_ident("response") && kind == Kind::Command {
                response = Some(meta.value()?.parse::<syn::Type>()?);
                Ok(())
            } else {
                let allowed = match kind {
                    Kind::Command => "`name`, `endpoint` or `response`",
                    Kind::Event => "`name`",
                };
                Err(meta.error(format!(
                    "unknown `{}` attribute; expected {allowed}",
                    kind.attr()
                )))
            }
        })?;
    }
    let name = name.unwrap_or_else(|| input.ident.to_string());
    Ok(Parsed {
        input,
        name,
        endpoint,
        response,
    })
}

fn expand(parsed: &Parsed, kind: Kind) -> TokenStream {
    let ident = &parsed.input.ident;
    let name = &parsed.name;
    let (kind_tokens, marker) = match kind {
        Kind::Command => (quote!(Command), quote!(::bus_core::Command)),
        Kind::Event => (quote!(Event), quote!(::bus_core::Event)),
    };
    let (endpoint, endpoint_check) = match &parsed.endpoint {
        Some(e) => (quote!(::bus_core::__private::Some(#e)), e.check()),
        None => (quote!(::bus_core::__private::None), TokenStream::new()),
    };
    let request = parsed.response.as_ref().map(|response| {
        quote! {
            impl ::bus_core::Request for #ident {
                type Response = #response;
            }
        }
    });
    quote! {
        #request

        impl ::bus_core::Message for #ident {
            const NAME: &'static str = #name;
            const KIND: ::bus_core::MessageKind = ::bus_core::MessageKind::#kind_tokens;
            const ENDPOINT: ::bus_core::__private::Option<&'static str> = #endpoint;
        }

        impl #marker for #ident {}

        #endpoint_check

        const _: () = {
            use ::bus_core::__private::typetag;

            #[typetag::serde(name = #name)]
            impl ::bus_core::AnyMessage for #ident {}

            ::bus_core::__private::inventory::submit! {
                ::bus_core::__private::MessageRegistration {
                    info: ::bus_core::__private::MessageInfo::of::<#ident>(),
                }
            }

            // Decided here, at the concrete type: a schema only when it implements
            // `schemars::JsonSchema` and bus-core has the `asyncapi` feature.
            ::bus_core::__private::inventory::submit! {
                ::bus_core::__private::SchemaRegistration {
                    info: ::bus_core::__private::MessageInfo::of::<#ident>(),
                    schema: || {
                        #[allow(unused_imports)]
                        use ::bus_core::__private::{HasSchema as _, NoSchema as _};
                        (&&::bus_core::__private::SchemaProbe::<#ident>::new()).schema()
                    },
                }
            }
        };
    }
}
