//! The node's root actor: parent of the router and of the shard
//! supervisor. It restarts nothing itself (the shard supervisor restarts
//! shards); it logs a child that stops or fails, so a dead router or
//! shard supervisor never goes unnoticed.

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

/// The node supervisor actor. It takes no messages of its own.
pub struct NodeSupervisor;

impl Actor for NodeSupervisor {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<()>, _args: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        // Unlike ractor's default, a child's end does not stop the node:
        // the node's shutdown stops the children in order.
        match event {
            SupervisionEvent::ActorTerminated(who, _, reason) => {
                tracing::debug!(actor = %who.get_id(), ?reason, "node child stopped");
            }
            SupervisionEvent::ActorFailed(who, e) => {
                tracing::error!(actor = %who.get_id(), error = %e, "node child failed");
            }
            _ => {}
        }
        Ok(())
    }
}
