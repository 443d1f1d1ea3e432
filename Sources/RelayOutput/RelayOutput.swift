public enum RelayOutputModule {}
