//! Layers: code of your own around every handler attempt, for what every handler of an
//! endpoint (or of the whole bus) needs and none should repeat: an authorization or tenancy
//! check, a log line with the message id, a metric.
//!
//! [`Layer`] says where layers sit and what they may do.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::context::MessageContext;
use crate::failure::Failure;

/// What a layer (and the rest of the pipeline) returns: `Ok` when the attempt succeeded.
pub type LayerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send + 'a>>;

/// Code run around every handler attempt of an endpoint.
///
/// It calls `next.run(ctx)` to go on and sees the outcome on the way back, or returns a
/// [`Failure`] without calling it to refuse the message ([`Failure::reject`]: straight to the
/// error queue). What happens after a failure is the endpoint's
/// [recoverability policy](crate::RecoverabilityPolicy)'s decision.
///
/// The order, outermost first: layers added with [`crate::BusBuilder::layer`] (in the order
/// added), then the endpoint's own ([`crate::EndpointConfig::layer`]), then the built-in
/// stages: the inbox (when the endpoint has one), the release of what the handlers sent, and
/// for each handler its timeout and panic catching. A panic in a layer fails the attempt like
/// a handler's. An endpoint without layers pays nothing for them: its attempts never go
/// through a [`Next`].
///
/// A tenancy check that refuses messages without a `tenant` header and logs the others:
///
/// ```
/// use bus_core::{Failure, Layer, LayerFuture, MessageContext, Next};
///
/// struct RequireTenant;
///
/// impl Layer for RequireTenant {
///     fn call<'a>(&'a self, ctx: &'a MessageContext, next: Next<'a>) -> LayerFuture<'a> {
///         Box::pin(async move {
///             let Some(tenant) = ctx.headers().get("tenant") else {
///                 return Err(Failure::reject("no `tenant` header"));
///             };
///             let outcome = next.run(ctx).await;
///             println!("{} for tenant {tenant}: {}", ctx.message_id(), outcome.is_ok());
///             outcome
///         })
///     }
/// }
///
/// let builder = bus_core::Bus::builder().layer(RequireTenant);
/// # drop(builder);
/// ```
pub trait Layer: Send + Sync + 'static {
    /// Run around one attempt: `next.run(ctx)` runs the rest of the pipeline (further layers,
    /// then the handlers). Not calling it ends the attempt with what this returns.
    fn call<'a>(&'a self, ctx: &'a MessageContext, next: Next<'a>) -> LayerFuture<'a>;

    /// A short name, recorded as the `bus-failure-handler` of a message this layer refused
    /// or whose panic it caused. Defaults to the Rust type name.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
}

/// The rest of the pipeline after a layer: the remaining layers, then the handlers.
pub struct Next<'a> {
    layers: &'a [Arc<dyn Layer>],
    innermost: Innermost<'a>,
}

/// What sits inside every layer: the handlers and the release of what they sent, made by the
/// runtime before the first layer runs and pinned where it is, so reaching it costs no
/// allocation of its own.
pub(crate) type Innermost<'a> = Pin<&'a mut (dyn Future<Output = Result<(), Failure>> + Send + 'a)>;

impl<'a> Next<'a> {
    pub(crate) fn new(layers: &'a [Arc<dyn Layer>], innermost: Innermost<'a>) -> Self {
        Next { layers, innermost }
    }

    /// Run the rest of the pipeline for this attempt.
    pub fn run(self, ctx: &'a MessageContext) -> Run<'a> {
        match self.layers.split_first() {
            Some((layer, rest)) => Run(RunInner::Layer(layer.call(
                ctx,
                Next {
                    layers: rest,
                    innermost: self.innermost,
                },
            ))),
            None => Run(RunInner::Innermost(self.innermost)),
        }
    }
}

/// The rest of the pipeline, running: what [`Next::run`] returns.
#[must_use = "the rest of the pipeline runs only when awaited"]
pub struct Run<'a>(RunInner<'a>);

enum RunInner<'a> {
    Layer(LayerFuture<'a>),
    Innermost(Innermost<'a>),
}

impl Future for Run<'_> {
    type Output = Result<(), Failure>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.0 {
            RunInner::Layer(layer) => layer.as_mut().poll(cx),
            RunInner::Innermost(innermost) => innermost.as_mut().poll(cx),
        }
    }
}

impl std::fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Run")
    }
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field(
                "layers",
                &self.layers.iter().map(|l| l.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}
