//! `#[saga]`: registers a saga's `impl SagaHandles<M> for S` as the handler of `M`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{GenericArgument, ItemImpl, PathArguments, Type};

use crate::endpoint::EndpointName;

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item_impl: ItemImpl = match syn::parse2(item.clone()) {
        Ok(i) => i,
        Err(_) => {
            let e = syn::Error::new(
                Span::call_site(),
                "`#[saga]` goes on an `impl SagaHandles<Message> for YourSaga` block",
            );
            let mut out = e.to_compile_error();
            out.extend(item);
            return out;
        }
    };
    match parse_args(attr).and_then(|endpoint| message_of(&item_impl).map(|m| (endpoint, m))) {
        Ok((endpoint, message)) => generate(&item_impl, endpoint.as_ref(), &message),
        Err(e) => {
            let mut out = e.to_compile_error();
            out.extend(quote!(#[::bus_core::async_trait] #item_impl));
            out
        }
    }
}

fn parse_args(attr: TokenStream) -> syn::Result<Option<EndpointName>> {
    let mut endpoint = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("endpoint") {
            endpoint = Some(EndpointName::parse(meta.value()?)?);
            Ok(())
        } else {
            Err(meta.error("unknown `saga` attribute; expected `endpoint = \"...\"`"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(endpoint)
}

/// The message type `M` of `impl SagaHandles<M> for S`.
fn message_of(item: &ItemImpl) -> syn::Result<Type> {
    let Some((_, path, _)) = &item.trait_ else {
        return Err(syn::Error::new_spanned(
            &item.self_ty,
            "`#[saga]` goes on an `impl SagaHandles<Message> for YourSaga` block, not an inherent impl",
        ));
    };
    let last = path
        .segments
        .last()
        .filter(|s| s.ident == "SagaHandles")
        .ok_or_else(|| {
            syn::Error::new_spanned(
                path,
                "`#[saga]` goes on an `impl SagaHandles<Message> for YourSaga` block",
            )
        })?;
    if let PathArguments::AngleBracketed(args) = &last.arguments {
        if let Some(GenericArgument::Type(ty)) = args.args.first() {
            return Ok(ty.clone());
        }
    }
    Err(syn::Error::new_spanned(
        last,
        "name the message the saga handles: `SagaHandles<OrderPlaced>`",
    ))
}

fn generate(item: &ItemImpl, endpoint: Option<&EndpointName>, message: &Type) -> TokenStream {
    let p = quote!(::bus_core::__private);
    let saga = &item.self_ty;
    let (endpoint, endpoint_check) = match endpoint {
        Some(name) => (quote!(#p::Some(#p::Cow::Borrowed(#name))), name.check()),
        None => (quote!(#p::None), TokenStream::new()),
    };
    let descriptor = quote_spanned! {item.span()=> #p::saga_descriptor::<#saga, #message> };
    quote! {
        #[::bus_core::async_trait]
        #item

        const _: () = {
            #endpoint_check
            fn __bus_descriptor() -> #p::HandlerDescriptor {
                #descriptor(
                    concat!(module_path!(), "::", stringify!(#saga), "<", stringify!(#message), ">"),
                    #endpoint,
                )
            }
            #p::inventory::submit! {
                #p::HandlerRegistration { factory: __bus_descriptor }
            }
        };
    }
}
