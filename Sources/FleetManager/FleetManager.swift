public enum FleetManagerModule {}
