"""Code shared by the gateway, the trainer server and the Unity stand-in."""
