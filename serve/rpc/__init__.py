"""The gRPC edge. Ray Serve's gRPC proxy calls the ingress's methods by RPC name, so each
service is a mixin of the Serve deployment: `funnel_v1.FunnelV1Rpc` (GetFeed, Moderate) and
`oip.OipRpc` (inference.GRPCInferenceService), both over `self.services`."""
