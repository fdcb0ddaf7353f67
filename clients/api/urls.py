from django.urls import path

from clients.api import views

urlpatterns = [
    path("me", views.MeApi.as_view(), name="me"),
    path("me/public-key", views.MyPublicKeyApi.as_view(), name="me-public-key"),
    path("operator/merchants", views.MerchantListApi.as_view(), name="op-merchants"),
    path("operator/merchants/<slug:slug>", views.MerchantDetailApi.as_view(), name="op-merchant"),
    path(
        "operator/merchants/<slug:slug>/status",
        views.MerchantStatusApi.as_view(),
        name="op-merchant-status",
    ),
    path("operator/merchants/<slug:slug>/tokens", views.TokenListApi.as_view(), name="op-tokens"),
    path(
        "operator/tokens/<int:token_id>/revoke",
        views.TokenRevokeApi.as_view(),
        name="op-token-revoke",
    ),
]
