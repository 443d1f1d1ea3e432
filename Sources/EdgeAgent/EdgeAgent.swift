public enum EdgeAgentModule {}
