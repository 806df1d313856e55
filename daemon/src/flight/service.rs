//! The one Flight service: plain Flight on stream descriptors and tickets, Flight SQL on
//! command descriptors and SQL tickets (handed to [`SqlService`]).

use std::pin::Pin;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures_util::Stream;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::sql::SqlService;
use super::{put, streams, subscribe, FlightState};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub(super) struct NeurodFlight {
    state: FlightState,
    sql: SqlService,
}

impl NeurodFlight {
    pub(super) fn new(state: FlightState) -> Self {
        NeurodFlight {
            sql: SqlService::new(state.sql.clone()),
            state,
        }
    }
}

/// Flight SQL tickets and commands are `google.protobuf.Any` messages of these types.
const SQL_TYPE_PREFIX: &str = "type.googleapis.com/arrow.flight.protocol.sql.";

fn is_sql(bytes: &[u8]) -> bool {
    arrow_flight::sql::Any::decode(bytes).is_ok_and(|any| any.type_url.starts_with(SQL_TYPE_PREFIX))
}

#[tonic::async_trait]
impl FlightService for NeurodFlight {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        // No authentication here (see `serve`): an empty handshake lets clients that insist on
        // one go on.
        let reply = HandshakeResponse::default();
        Ok(Response::new(Box::pin(futures_util::stream::iter([Ok(
            reply,
        )]))))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let infos = streams::list(&self.state).await?;
        Ok(Response::new(Box::pin(futures_util::stream::iter(
            infos.into_iter().map(Ok),
        ))))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        if request.get_ref().path.is_empty() {
            return FlightService::get_flight_info(&self.sql, request).await;
        }
        let id = stream_path(request.get_ref())?;
        Ok(Response::new(streams::info(&self.state, &id).await?))
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        FlightService::poll_flight_info(&self.sql, request).await
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        if request.get_ref().path.is_empty() {
            return FlightService::get_schema(&self.sql, request).await;
        }
        let id = stream_path(request.get_ref())?;
        let info = streams::info(&self.state, &id).await?;
        Ok(Response::new(SchemaResult {
            schema: info.schema,
        }))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        if is_sql(&request.get_ref().ticket) {
            return FlightService::do_get(&self.sql, request).await;
        }
        let ticket = subscribe::StreamTicket::parse(&request.get_ref().ticket)?;
        Ok(Response::new(subscribe::do_get(&self.state, ticket).await?))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Ok(Response::new(put::do_put(&self.state, request).await?))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        FlightService::do_action(&self.sql, request).await
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        FlightService::list_actions(&self.sql, request).await
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented(
            "neurod has no DoExchange: DoGet subscribes, DoPut pushes",
        ))
    }
}

/// The stream id a path descriptor names: `[id]`.
fn stream_path(d: &FlightDescriptor) -> Result<String, Status> {
    match d.path.as_slice() {
        [id] if !id.is_empty() => Ok(id.clone()),
        other => Err(Status::invalid_argument(format!(
            "a descriptor path names one stream, [\"<stream id>\"]; got {other:?}"
        ))),
    }
}
