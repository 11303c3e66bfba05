"""The stream layer: Kafka event contracts, and (next) the consumer core and user state. No Ray."""
