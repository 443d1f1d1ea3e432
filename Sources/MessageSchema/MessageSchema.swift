public enum MessageSchemaModule {}
