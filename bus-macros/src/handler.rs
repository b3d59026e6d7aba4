//! `#[handler]`: turns an async fn into a registered handler descriptor.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, Type};

use crate::endpoint::EndpointName;

struct Args {
    endpoint: Option<EndpointName>,
}

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let e = syn::Error::new(Span::call_site(), "`#[handler]` goes on an `async fn`");
            let mut out = e.to_compile_error();
            out.extend(item);
            return out;
        }
    };
    let result = parse_args(attr).and_then(|args| validate(&func).map(|types| (args, types)));
    match result {
        Ok((args, (message, extractors))) => generate(&func, &args, message, &extractors),
        Err(e) => {
            let mut out = e.to_compile_error();
            out.extend(quote!(#func));
            out
        }
    }
}

fn parse_args(attr: TokenStream) -> syn::Result<Args> {
    let mut args = Args { endpoint: None };
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("endpoint") {
            args.endpoint = Some(EndpointName::parse(meta.value()?)?);
            Ok(())
        } else {
            Err(meta.error("unknown `handler` attribute; expected `endpoint = \"...\"`"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(args)
}

/// The message type and the extractor types, or the first mistake.
fn validate(func: &ItemFn) -> syn::Result<(&Type, Vec<&Type>)> {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "a handler must be an `async fn`",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a handler cannot be generic: it is registered for one message type",
        ));
    }
    let mut types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new_spanned(
                    r,
                    "a handler is a free function; it cannot take `self`",
                ));
            }
            FnArg::Typed(pt) => types.push(&*pt.ty),
        }
    }
    if types.is_empty() {
        return Err(syn::Error::new(
            sig.paren_token.span.join(),
            "a handler takes the message as its first argument, e.g. `(cmd: PlaceOrder, ctx: MessageContext)`",
        ));
    }
    if let ReturnType::Default = sig.output {
        return Err(syn::Error::new(
            sig.paren_token.span.close(),
            "a handler must return `Result<(), E>`, e.g. `-> Result<(), HandlerError>`",
        ));
    }
    let message = types.remove(0);
    Ok((message, types))
}

/// Whether the handler answers a request: it returns a type named `Result` (`Result<T, E>`,
/// `anyhow::Result<T>`, ...) whose first argument `T` is not `()`. Anything else, including an
/// alias of another name, converts as a plain handler's result.
fn answers(output: &ReturnType) -> bool {
    let ReturnType::Type(_, ty) = output else {
        return false;
    };
    let Type::Path(path) = &**ty else {
        return false;
    };
    let Some(last) = path.path.segments.last().filter(|s| s.ident == "Result") else {
        return false;
    };
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return false;
    };
    match args.args.first() {
        Some(syn::GenericArgument::Type(Type::Tuple(unit))) => !unit.elems.is_empty(),
        Some(syn::GenericArgument::Type(_)) => true,
        _ => false,
    }
}

fn generate(func: &ItemFn, args: &Args, message: &Type, extractors: &[&Type]) -> TokenStream {
    let ident = &func.sig.ident;
    let p = quote!(::bus_core::__private);
    let (endpoint, endpoint_check) = match &args.endpoint {
        Some(name) => (quote!(#p::Some(#p::Cow::Borrowed(#name))), name.check()),
        None => (quote!(#p::None), TokenStream::new()),
    };
    let xs: Vec<_> = (0..extractors.len())
        .map(|i| format_ident!("__bus_x{}", i))
        .collect();
    let vals: Vec<_> = (0..extractors.len())
        .map(|i| format_ident!("__bus_a{}", i))
        .collect();
    let extractor_decls = extractors.iter().zip(&xs).map(|(ty, x)| {
        quote_spanned! {ty.span()=> let #x = #p::extractor::<#ty>(); }
    });
    let extracts = xs.iter().zip(&vals).map(|(x, v)| {
        quote! {
            let #v = match (#x.extract)(&__bus_ctx) {
                #p::Ok(v) => v,
                #p::Err(e) => return #p::Err(e),
            };
        }
    });
    let output_span = match &func.sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => ident.span(),
    };
    // The conversion is a separate expression made only of tokens at the return type (even the
    // path and the variable, which is bound and used with that one span), so a bad return type
    // is one error, there.
    let ret = Ident::new("__bus_ret", output_span);
    let call = quote! { let #ret = #ident(__bus_msg #(, #vals)*).await; };
    let convert = if answers(&func.sig.output) {
        // A request's handler: its `Ok` value is the reply, checked against the request's
        // response type where the user wrote the return type.
        let ctx = Ident::new("__bus_ctx", Span::call_site());
        quote_spanned! {output_span=> ::bus_core::__private::into_reply::<#message, _>(&#ctx, #ret) }
    } else {
        quote_spanned! {output_span=> ::bus_core::__private::into_result(#ret) }
    };
    let descriptor = quote_spanned! {message.span()=> #p::descriptor::<#message, _, _> };
    quote! {
        #func

        const _: () = {
            #endpoint_check
            fn __bus_descriptor() -> #p::HandlerDescriptor {
                #(#extractor_decls)*
                let mut __bus_requires = #p::Vec::new();
                #( __bus_requires.push((#xs.requires)()); )*
                #descriptor(
                    concat!(module_path!(), "::", stringify!(#ident)),
                    #endpoint,
                    __bus_requires,
                    move |__bus_msg: #message, __bus_ctx: #p::MessageContext| async move {
                        #(#extracts)*
                        #call
                        #convert
                    },
                )
            }
            #p::inventory::submit! {
                #p::HandlerRegistration { factory: __bus_descriptor }
            }
        };
    }
}
